"""The GPU worker fleet as ``GET /v1/workers`` shows it: each worker's heartbeat row
(:mod:`jobs.heartbeats`), its engine statistics and how many jobs it is running.

Workers are the operator's capacity, shared by every tenant, so any authenticated tenant sees
the whole fleet: ids, model, slots, KV budget, rates and a count of running jobs — never which
jobs or whose. A worker silent for ``worker_dead_seconds`` is listed as ``dead`` (with the last
statistics it sent) until the sweeper drops its row, so an operator sees it go; the totals count
live workers only.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobs.render import rfc3339
from jobs.states import JobStatus
from jobs.tables import Job, Worker


def worker_to_dict(worker: Worker, running_jobs: int, live: bool) -> dict[str, Any]:
    stats: dict[str, Any] = worker.stats or {}
    engine: dict[str, Any] = stats.get("engine") or {}
    return {
        "id": worker.id, "object": "worker", "status": "live" if live else "dead", "model": worker.model,
        "started_at": rfc3339(worker.started_at), "last_heartbeat_at": rfc3339(worker.last_seen),
        "slots": engine.get("slots"), "kv_budget_tokens": engine.get("kv_budget_tokens"),
        "tokens_per_s": stats.get("tokens_per_s"), "batch_occupancy": stats.get("batch_occupancy"),
        "busy_fraction": stats.get("busy_fraction"), "window_seconds": stats.get("window_seconds"),
        "requests_per_s": stats.get("requests_per_s"), "running_jobs": running_jobs,
        "free_slots": max(0, slots - running_jobs) if isinstance(slots := engine.get("slots"), int) else None,
        "model_revision": stats.get("model_revision"), "checkpoint": stats.get("checkpoint"),
        "engine": engine or None,
    }


def list_workers(session: Session, dead_seconds: float, now: datetime) -> dict[str, Any]:
    """Every worker row, most recently started first, and the live workers' totals."""
    since = now - timedelta(seconds=dead_seconds)
    workers = session.scalars(sa.select(Worker).order_by(Worker.started_at.desc(), Worker.id)).all()
    running = dict(session.execute(  # type: ignore[arg-type]
        sa.select(Job.worker_id, sa.func.count())
        .where(Job.status == JobStatus.RUNNING, Job.worker_id.is_not(None)).group_by(Job.worker_id)).all())
    data = [worker_to_dict(w, int(running.get(w.id, 0)), w.last_seen > since) for w in workers]
    live = [d for d in data if d["status"] == "live"]
    return {"object": "list", "data": data, "totals": {
        "live_workers": len(live),
        "slots": sum(d["slots"] or 0 for d in live),
        "kv_budget_tokens": sum(d["kv_budget_tokens"] or 0 for d in live),
        "tokens_per_s": round(sum(d["tokens_per_s"] or 0.0 for d in live), 3),
        "running_jobs": sum(d["running_jobs"] for d in live),
    }}
