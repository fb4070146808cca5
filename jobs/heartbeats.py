"""GPU worker heartbeats: a row in ``workers`` whose ``last_seen`` each worker refreshes every
``settings.heartbeat_seconds``, and the jobs it runs (``jobs.worker_id``, set by the claim).

A worker silent for ``settings.worker_dead_seconds`` is gone (SIGKILL, a lost host, a hung
process): the sweeper (:mod:`jobs.recovery`) requeues its running jobs, instead of waiting for
``job_hard_time_limit + stuck_grace_seconds``. ``/readyz`` counts the live ones.

Each beat also stores the engine's statistics (``workers.stats``, what ``GET /v1/workers``
shows): a snapshot from the worker's ``stats_source`` (``Runtime.engine_stats``: the
``models.batcher.BatcherStats`` counters) and the rates over the last interval, computed here
from consecutive snapshots (:class:`StatsWindow`) so that the API needs no history::

    {"engine": {"slots": 16, "kv_budget_tokens": 32768, "tokens_generated": 81234, ...},
     "window_seconds": 5.0, "tokens_per_s": 412.3, "batch_occupancy": 0.71, "busy_fraction": 0.98}

The heartbeat lives in the database, not the broker: it is what the sweeper and the claim already
use, so one outage cannot make the two disagree, and it works the same in local mode (SQLite).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from core.db import Database, utcnow
from jobs.tables import Worker

log = logging.getLogger(__name__)

#: what a worker passes as ``stats_source``: the engine's counters, BatcherStats' field names
StatsSource = Callable[[], dict[str, Any]]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class StatsWindow:
    """Rates between consecutive engine snapshots: tokens/s (generated tokens over the interval),
    batch occupancy (rows per decoding step over the slots) and the busy fraction (model time
    over the interval). The first snapshot, one after the engine's counters went back (a new
    engine), and an interval without decoding steps have no rate of their own: ``None``
    (occupancy) or 0 (tokens/s and busy fraction after an idle interval).

    The static batcher counts a batch when it ends, so its rates come in bursts: a batch that
    spans intervals counts whole in the one where it ended (``window_seconds`` is the
    heartbeat's interval, not the batch's)."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, Any]] | None = None

    def update(self, snapshot: dict[str, Any], now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"engine": snapshot, "window_seconds": None, "tokens_per_s": None,
                               "requests_per_s": None, "batch_occupancy": None, "busy_fraction": None}
        last, self._last = self._last, (now, snapshot)
        if last is None or now <= last[0]:
            return out

        def delta(name: str) -> float:
            return float(snapshot.get(name, 0) or 0) - float(last[1].get(name, 0) or 0)

        if delta("tokens_generated") < 0 or delta("decode_steps") < 0:  # counters restarted
            return out
        dt = now - last[0]
        steps, slots = delta("decode_steps"), snapshot.get("slots") or 0
        out["window_seconds"] = round(dt, 3)
        out["tokens_per_s"] = round(delta("tokens_generated") / dt, 3)
        out["requests_per_s"] = round(delta("requests") / dt, 3)
        out["busy_fraction"] = round(min(1.0, max(0.0, delta("busy_seconds") / dt)), 4)
        if steps > 0 and slots:
            out["batch_occupancy"] = round(delta("rows_stepped") / steps / slots, 4)
        return out


def beat(db: Database, worker_id: str, *, model: str | None = None, stats: dict[str, Any] | None = None,
         now: datetime | None = None) -> None:
    """Record that ``worker_id`` is alive (re-registering it if the sweeper dropped it), with its
    engine ``stats`` when given (else the stored ones stay)."""
    now = now or utcnow()
    values: dict[str, Any] = {"last_seen": now}
    if stats is not None:
        values["stats"] = stats
    with db.session() as session:
        res = session.execute(sa.update(Worker).where(Worker.id == worker_id).values(**values))
        if not res.rowcount:  # type: ignore[attr-defined]
            session.add(Worker(id=worker_id, hostname=socket.gethostname(), pid=os.getpid(), model=model,
                               started_at=now, last_seen=now, stats=stats))


def forget(db: Database, worker_id: str) -> None:
    """A clean shutdown: the row goes (its jobs, if any, finished or went back to the broker)."""
    with db.session() as session:
        session.execute(sa.delete(Worker).where(Worker.id == worker_id))


def live_count(db: Database, dead_seconds: float, now: datetime | None = None) -> int:
    """GPU workers heard from within ``dead_seconds``."""
    since = (now or utcnow()) - timedelta(seconds=dead_seconds)
    with db.session() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(Worker)
                                  .where(Worker.last_seen > since)) or 0)


def dead_workers(db: Database, dead_seconds: float, now: datetime) -> list[str]:
    since = now - timedelta(seconds=dead_seconds)
    with db.session() as session:
        return list(session.scalars(sa.select(Worker.id).where(Worker.last_seen <= since)))


class Heartbeat:
    """A daemon thread that calls :func:`beat` every ``interval`` seconds until :meth:`close`,
    with the stats of ``stats_source`` (if given) and their rates over the interval, and the
    worker's fixed ``about`` facts (its model's revision).
    A failed beat (database down) is logged and tried again at the next tick: the sweeper does
    not judge workers while it cannot reach the database either (see :mod:`jobs.recovery`).
    A failing ``stats_source`` only leaves the stats out of that beat."""

    def __init__(self, db: Database, worker_id: str, interval: float, *, model: str | None = None,
                 stats_source: StatsSource | None = None, about: dict[str, Any] | None = None) -> None:
        self.db, self.worker_id, self.interval, self.model = db, worker_id, interval, model
        self.stats_source = stats_source
        # Fixed facts stored with every beat's stats (the model's revision and checkpoint).
        self.about = dict(about or {})
        self._window = StatsWindow()
        # The last stats sent, with their rates over the interval (the worker's /metrics reads it).
        self.last: dict[str, Any] | None = None
        self._stop = threading.Event()
        beat(db, worker_id, model=model, stats=self._stats())  # registered before the first claim
        self._thread = threading.Thread(target=self._loop, name="captionq-heartbeat", daemon=True)
        self._thread.start()

    def _stats(self) -> dict[str, Any] | None:
        if self.stats_source is None:
            return self.about or None
        try:
            self.last = self.about | self._window.update(self.stats_source(), time.monotonic())
            return self.last
        except Exception as exc:
            log.warning("engine stats of %s unavailable: %s: %s", self.worker_id, type(exc).__name__, exc)
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                beat(self.db, self.worker_id, model=self.model, stats=self._stats())
            except Exception as exc:
                log.warning("heartbeat of %s failed: %s", self.worker_id, type(exc).__name__)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            forget(self.db, self.worker_id)
        except Exception as exc:
            log.warning("could not unregister worker %s: %s", self.worker_id, type(exc).__name__)
