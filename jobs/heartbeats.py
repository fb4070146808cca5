"""GPU worker heartbeats: a row in ``workers`` whose ``last_seen`` each worker refreshes every
``settings.heartbeat_seconds``, and the jobs it runs (``jobs.worker_id``, set by the claim).

A worker silent for ``settings.worker_dead_seconds`` is gone (SIGKILL, a lost host, a hung
process): the sweeper (:mod:`jobs.recovery`) requeues its running jobs, instead of waiting for
``job_hard_time_limit + stuck_grace_seconds``. ``/readyz`` counts the live ones.

The heartbeat lives in the database, not the broker: it is what the sweeper and the claim already
use, so one outage cannot make the two disagree, and it works the same in local mode (SQLite).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa

from core.db import Database, utcnow
from jobs.tables import Worker

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def beat(db: Database, worker_id: str, *, model: str | None = None, now: datetime | None = None) -> None:
    """Record that ``worker_id`` is alive (re-registering it if the sweeper dropped it)."""
    now = now or utcnow()
    with db.session() as session:
        res = session.execute(sa.update(Worker).where(Worker.id == worker_id).values(last_seen=now))
        if not res.rowcount:  # type: ignore[attr-defined]
            session.add(Worker(id=worker_id, hostname=socket.gethostname(), pid=os.getpid(), model=model,
                               started_at=now, last_seen=now))


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
    """A daemon thread that calls :func:`beat` every ``interval`` seconds until :meth:`close`.
    A failed beat (database down) is logged and tried again at the next tick: the sweeper does
    not judge workers while it cannot reach the database either (see :mod:`jobs.recovery`)."""

    def __init__(self, db: Database, worker_id: str, interval: float, *, model: str | None = None) -> None:
        self.db, self.worker_id, self.interval, self.model = db, worker_id, interval, model
        self._stop = threading.Event()
        beat(db, worker_id, model=model)  # registered before the first claim
        self._thread = threading.Thread(target=self._loop, name="captionq-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                beat(self.db, self.worker_id, model=self.model)
            except Exception as exc:
                log.warning("heartbeat of %s failed: %s", self.worker_id, type(exc).__name__)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            forget(self.db, self.worker_id)
        except Exception as exc:
            log.warning("could not unregister worker %s: %s", self.worker_id, type(exc).__name__)
