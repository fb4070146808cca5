"""The served models as ``GET /v1/models`` shows them: for each registry entry
(``core/registry.py``) the live workers serving it (their heartbeat rows, :mod:`jobs.heartbeats`),
their free slots, the model's queue (jobs waiting in SQL, messages waiting in the broker), the
age of its oldest queued job and a rough wait estimate. Dashboards and autoscalers read it.

A model without a live worker is flagged (``status: "no_live_workers"``): its jobs wait, queued,
until a worker for it starts (``captionq worker --model NAME``); none is lost or refused.

The wait estimate is rough on purpose: the jobs queued ahead over the rate the model's live
workers finished requests at during their last heartbeat interval (a multi-round job counts
one request per round, so it errs short). With no rate to go by it is 0 when the free slots
take every queued job, else unknown (null).

Like ``GET /v1/workers`` this is the operator's shared capacity: any tenant sees the counts,
never whose jobs they are.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.registry import ModelSpec, Registry
from jobs.fleet import worker_to_dict
from jobs.queue import QUEUE_GPU, caption_queue
from jobs.render import rfc3339
from jobs.states import JobStatus
from jobs.tables import Job, Worker

#: counts the messages waiting in a broker queue (None: the transport cannot say)
QueueCounter = Callable[[str], int | None]


def list_models(session: Session, registry: Registry, dead_seconds: float, now: datetime,
                count_messages: QueueCounter | None = None) -> dict[str, Any]:
    since = now - timedelta(seconds=dead_seconds)
    queued = {row.model: (int(row.n), row.oldest) for row in session.execute(
        sa.select(Job.model, sa.func.count().label("n"), sa.func.min(Job.created_at).label("oldest"))
        .where(Job.status == JobStatus.QUEUED.value).group_by(Job.model))}
    running_by_worker: dict[str, int] = {row.worker_id: int(row.n) for row in session.execute(
        sa.select(Job.worker_id, sa.func.count().label("n"))
        .where(Job.status == JobStatus.RUNNING.value, Job.worker_id.is_not(None)).group_by(Job.worker_id))}
    running = {row.model: int(row.n) for row in session.execute(
        sa.select(Job.model, sa.func.count().label("n"))
        .where(Job.status == JobStatus.RUNNING.value).group_by(Job.model))}
    live = session.scalars(sa.select(Worker).where(Worker.last_seen > since)
                           .order_by(Worker.started_at.desc(), Worker.id)).all()
    data = []
    for spec in registry.models.values():
        default = spec.name == registry.default
        # Jobs stored before jobs named a model are the default model's.
        n_queued, oldest = _merge(queued.get(spec.name), queued.get(None) if default else None)
        n_running = running.get(spec.name, 0) + (running.get(None, 0) if default else 0)
        workers = [worker_to_dict(w, running_by_worker.get(w.id, 0), True)
                   for w in live if w.model == spec.name]
        messages = None
        if count_messages is not None:
            queues = [caption_queue(spec.name), *([QUEUE_GPU] if default else [])]
            counts = [count_messages(q) for q in queues]
            messages = None if None in counts else sum(c or 0 for c in counts)
        data.append(model_to_dict(spec, default, workers, n_queued, n_running, oldest, now, messages))
    return {"object": "list", "default_model": registry.default, "data": data}


def model_to_dict(spec: ModelSpec, default: bool, workers: list[dict[str, Any]], queued: int, running: int,
                  oldest: datetime | None, now: datetime, messages: int | None) -> dict[str, Any]:
    slots = sum(w["slots"] or 0 for w in workers)
    free = sum(max(0, (w["slots"] or 0) - w["running_jobs"]) for w in workers)
    rate = sum(w["requests_per_s"] or 0.0 for w in workers)
    return {
        "id": spec.name, "object": "model", "default": default, "checkpoint": spec.checkpoint,
        "limits": spec.limits(), "queue": caption_queue(spec.name),
        "status": "available" if workers else "no_live_workers",
        "live_workers": len(workers), "slots": slots, "free_slots": free,
        "revisions": sorted({w["model_revision"] for w in workers if w["model_revision"]}),
        "queued_jobs": queued, "running_jobs": running, "queue_messages": messages,
        "oldest_queued_at": rfc3339(oldest),
        "oldest_queued_seconds": round((now - oldest).total_seconds(), 3) if oldest is not None else None,
        "estimated_wait_seconds": estimate_wait(len(workers), queued, free, rate),
        "workers": [{k: w[k] for k in WORKER_KEYS} for w in workers],
    }


WORKER_KEYS = ("id", "status", "model_revision", "last_heartbeat_at", "slots", "running_jobs", "free_slots",
               "tokens_per_s", "requests_per_s", "batch_occupancy")


def estimate_wait(live_workers: int, queued: int, free_slots: int, requests_per_s: float) -> float | None:
    """Rough seconds until a job submitted now starts (see the module docs)."""
    if live_workers == 0:
        return None
    if queued < free_slots:
        return 0.0
    if requests_per_s > 0:
        return round(queued / requests_per_s, 1)
    return None


def _merge(a: tuple[int, datetime | None] | None,
           b: tuple[int, datetime | None] | None) -> tuple[int, datetime | None]:
    parts = [p for p in (a, b) if p is not None]
    oldest = [p[1] for p in parts if p[1] is not None]
    return sum(p[0] for p in parts), min(oldest) if oldest else None
