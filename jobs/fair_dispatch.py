"""The fair dispatcher: which waiting batch jobs enter a GPU queue of the broker, decided in SQL.

A batch's jobs do not go to the broker at submission. Its insert writes one ``dispatch_batch``
outbox row (:mod:`jobs.outbox`) meaning "this batch has jobs waiting in SQL for queue Q"; a
*dispatch* of Q then tops the broker's list up to ``dispatch_window`` messages, choosing among the
tenants with waiting jobs by :func:`jobs.fair.pick` (virtual time over the tenants' weights;
within a tenant priority with aging, then age). Because the broker holds only about a window of
messages, the order jobs start in is the order chosen here: a tenant's million-job backlog sits
in SQL, and another tenant's job waits behind one window, about one batch's running time, instead
of behind the backlog. Single jobs (``POST /v1/jobs``) are interactive: their message goes to the
broker at submission, as before, and counts against the window.

One dispatch is one transaction:

1. lock the queue's ``fair_queues`` row (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL; a
   write on SQLite, whose database lock serialises writers). Dispatchers of one queue therefore
   take turns: an API process after a batch insert, every worker after each claim (through a
   :class:`Kicker`), the sweeper on each host. One that finds the row locked returns ``None``:
   the holder is dispatching; the kicker tries again a moment later, so a claim that happened
   during someone else's dispatch is never left unanswered;
2. count the queued jobs whose message waits in the broker (a partial index) → the room left;
3. read each waiting tenant's first jobs per priority level (a partial index, ``room + 1`` per
   level: enough to rank them with aging, and to see whether any are left), its weight and its
   finish tag, and let :func:`jobs.fair.pick` choose;
4. stamp the chosen jobs ``dispatched_at`` with a conditional UPDATE (still ``queued`` and not
   yet dispatched: a job canceled meanwhile is skipped), store the clock, and drop the dispatch
   rows of tenants with nothing left waiting;
5. send the messages, then commit. A send that fails rolls everything back; a crash after the
   send and before the commit sends those jobs again later, which the conditional claim
   tolerates. A message lost after the commit is re-sent by ``jobs.recovery.resend_queued``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.db import Database, utcnow
from core.settings import Settings
from jobs import fair
from jobs.model_fleet import served_model
from jobs.queue import QUEUE_GPU, TASK_CAPTION, Message, Publisher, queue_model
from jobs.states import JobStatus
from jobs.tables import Batch, FairQueue, FairTenant, Job, Outbox, Tenant, Worker

log = logging.getLogger(__name__)

# Not a Celery task: an outbox row meaning "batch args[0] has jobs waiting in SQL for this queue".
DISPATCH_BATCH = "captionq.outbox.dispatch_batch"
# At most this many messages per transaction (an unbounded window loops).
DISPATCH_CHUNK = 5000
SEND_CHUNK = 1000


@dataclass(frozen=True)
class FairConfig:
    """What a dispatch needs from the settings."""

    window: int | None = None  # None: the live workers' slots; 0: no limit
    window_min: int = 16
    aging_seconds: float = 60.0
    default_weight: float = 1.0
    worker_dead_seconds: float = 20.0

    @classmethod
    def from_settings(cls, s: Settings) -> FairConfig:
        return cls(s.dispatch_window, s.dispatch_window_min, s.fair_aging_seconds, s.fair_default_weight,
                   s.worker_dead_seconds)


def _caption_on(queue: str, job_id: str, priority: int) -> Message:
    return Message(TASK_CAPTION, [job_id], queue, job_id, priority)


def dispatch(db: Database, publisher: Publisher, config: FairConfig, queue: str = QUEUE_GPU, *,
             wait_seconds: float = 0.0, now: datetime | None = None) -> int | None:
    """Top ``queue`` up (module docs). Returns how many messages were sent, or None when another
    dispatcher held the queue for all of ``wait_seconds``."""
    _ensure_queue(db, queue)
    deadline = time.monotonic() + wait_seconds
    total = 0
    while True:
        sent = _dispatch_once(db, publisher, config, queue, now or utcnow())
        if sent is None:
            if total or time.monotonic() >= deadline:
                return total or None
            time.sleep(0.02)
            continue
        total += sent
        if sent < DISPATCH_CHUNK:  # the window is full or nothing is left
            return total


# Per Database: the queues whose clock row is known to exist (weak: a disposed database's entry
# goes with it).
_known_queues: weakref.WeakKeyDictionary[Database, set[str]] = weakref.WeakKeyDictionary()


def _ensure_queue(db: Database, queue: str) -> None:
    """The queue's clock row exists (created once; a concurrent creation is fine)."""
    known = _known_queues.setdefault(db, set())
    if queue in known:
        return
    with db.session() as session:
        if session.get(FairQueue, queue) is None:
            session.add(FairQueue(queue=queue, vtime=0.0, updated_at=utcnow()))
            try:
                session.flush()
            except sa.exc.IntegrityError:
                session.rollback()
    known.add(queue)


def _lock(session: Session, queue: str, now: datetime) -> bool:
    if session.get_bind().dialect.name == "postgresql":
        got = session.execute(sa.select(FairQueue.queue).where(FairQueue.queue == queue)
                              .with_for_update(skip_locked=True)).first()
        return got is not None
    # SQLite: the first write takes the database's write lock until the commit.
    res = session.execute(sa.update(FairQueue).where(FairQueue.queue == queue).values(updated_at=now))
    return bool(res.rowcount)  # type: ignore[attr-defined]


def of_queue(queue: str) -> sa.ColumnElement[bool]:
    """The condition "a job whose caption message goes to ``queue``" (its model's queue)."""
    model = queue_model(queue)
    return Job.model.is_(None) if model is None else Job.model == model


def window_size(session: Session, config: FairConfig, now: datetime, queue: str = QUEUE_GPU) -> int:
    """The window of ``queue`` in messages (0: no limit): by default the decode slots of the live
    workers serving its model (every worker for the plain ``gpu`` queue)."""
    if config.window is not None:
        return config.window
    model = queue_model(queue)
    live = session.scalars(sa.select(Worker).where(
        Worker.last_seen > now - timedelta(seconds=config.worker_dead_seconds))).all()
    slots = sum(int(((w.stats or {}).get("engine") or {}).get("slots") or 0)
                for w in live if model is None or served_model(w) == model)
    return max(config.window_min, slots)


def waiting_in_broker(session: Session, queue: str = QUEUE_GPU) -> int:
    """Queued jobs of ``queue`` whose caption message was sent (they wait in the broker, or a
    worker took the message and has not claimed yet)."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(Job).where(
        Job.status == JobStatus.QUEUED.value, Job.dispatched_at.is_not(None), of_queue(queue))) or 0)


def _dispatch_rows(session: Session, queue: str) -> list[Any]:
    batch_id = Outbox.args[0].as_string()
    return list(session.execute(
        sa.select(Outbox.id, batch_id.label("batch_id"), Batch.tenant_id)
        .join(Batch, Batch.id == batch_id)
        .where(Outbox.task == DISPATCH_BATCH, Outbox.queue == queue).order_by(Outbox.id)
    ).all())


def _candidates(session: Session, queue: str, tenant_batches: dict[str, list[str]], limit: int
                ) -> tuple[dict[str, list[fair.Candidate]], dict[str, dict[int, int]]]:
    """Each tenant's first ``limit`` jobs waiting for ``queue`` per priority level (oldest
    first), and how many each level returned."""
    parts = []
    for tenant_id, batch_ids in tenant_batches.items():
        for level in fair.PRIORITY_LEVELS:
            parts.append(
                sa.select(Job.id, Job.tenant_id, Job.priority, Job.created_at, Job.seq)
                .where(Job.tenant_id == tenant_id, of_queue(queue), Job.priority == level,
                       Job.status == JobStatus.QUEUED.value, Job.dispatched_at.is_(None),
                       Job.batch_id.in_(batch_ids))
                .order_by(Job.created_at, Job.seq).limit(limit).subquery().select()
            )
    waiting: dict[str, list[fair.Candidate]] = defaultdict(list)
    per_level: dict[str, dict[int, int]] = {t: {} for t in tenant_batches}
    for start in range(0, len(parts), 200):  # a bounded statement even with many tenants
        for r in session.execute(sa.union_all(*parts[start:start + 200])).all():
            c = fair.Candidate(r.id, r.tenant_id, r.priority, r.created_at, r.seq or 0)
            waiting[r.tenant_id].append(c)
            per_level[r.tenant_id][r.priority] = per_level[r.tenant_id].get(r.priority, 0) + 1
    return waiting, per_level


def _clock(session: Session, queue: str, tenants: list[str]) -> fair.Clock:
    vtime = session.scalar(sa.select(FairQueue.vtime).where(FairQueue.queue == queue)) or 0.0
    rows = session.execute(sa.select(FairTenant.tenant_id, FairTenant.finish).where(
        FairTenant.queue == queue, FairTenant.tenant_id.in_(tenants))).all()
    return fair.Clock(float(vtime), {r.tenant_id: float(r.finish) for r in rows})


def weights(session: Session, tenants: list[str], default: float) -> dict[str, float]:
    rows = session.execute(sa.select(Tenant.id, Tenant.weight).where(Tenant.id.in_(tenants))).all()
    return {r.id: float(r.weight) if r.weight else default for r in rows}


def _save_clock(session: Session, queue: str, clock: fair.Clock, tenants: set[str], now: datetime) -> None:
    session.execute(sa.update(FairQueue).where(FairQueue.queue == queue)
                    .values(vtime=clock.vtime, updated_at=now))
    if not tenants:
        return
    known = set(session.scalars(sa.select(FairTenant.tenant_id).where(
        FairTenant.queue == queue, FairTenant.tenant_id.in_(tenants))))
    for t in tenants:
        if t in known:
            session.execute(sa.update(FairTenant).where(FairTenant.queue == queue, FairTenant.tenant_id == t)
                            .values(finish=clock.finish[t]))
        else:  # no other dispatcher of this queue runs now (the lock): a plain insert is safe
            session.add(FairTenant(queue=queue, tenant_id=t, finish=clock.finish[t]))
    session.flush()


def _dispatch_once(db: Database, publisher: Publisher, config: FairConfig, queue: str,
                   now: datetime) -> int | None:
    with db.session() as session:
        if not _lock(session, queue, now):
            return None
        rows = _dispatch_rows(session, queue)
        if not rows:
            return 0
        window = window_size(session, config, now, queue)
        room = (DISPATCH_CHUNK if window <= 0
                else min(DISPATCH_CHUNK, window - waiting_in_broker(session, queue)))
        if room <= 0:
            return 0
        tenant_batches: dict[str, list[str]] = defaultdict(list)
        tenant_rows: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            tenant_batches[r.tenant_id].append(r.batch_id)
            tenant_rows[r.tenant_id].append(r.id)
        tenants = list(tenant_batches)
        waiting, per_level = _candidates(session, queue, tenant_batches, room + 1)
        clock = _clock(session, queue, tenants)
        shares = weights(session, tenants, config.default_weight)
        chosen = fair.pick(fair.Clock(clock.vtime, dict(clock.finish)), waiting, shares, room, now,
                           config.aging_seconds, config.default_weight)
        sent: list[Any] = []
        if chosen:
            ids = [c.job_id for c in chosen]
            stamped = {r.id: r.priority for r in session.execute(
                sa.update(Job).where(Job.id.in_(ids), Job.status == JobStatus.QUEUED.value,
                                     Job.dispatched_at.is_(None))
                .values(dispatched_at=now).returning(Job.id, Job.priority)
                .execution_options(synchronize_session=False))}
            sent = [c for c in chosen if c.job_id in stamped]
            clock = fair.replay(clock, [c.tenant_id for c in sent], shares, config.default_weight)
            _save_clock(session, queue, clock, {c.tenant_id for c in sent}, now)
        picked: dict[str, int] = defaultdict(int)
        for c in chosen:
            picked[c.tenant_id] += 1
        done = [row_id for t in tenants if fair.exhausted(per_level[t], room + 1)
                and picked[t] == len(waiting.get(t, [])) for row_id in tenant_rows[t]]
        if done:  # nothing of these tenants' batches waits any more: their dispatch is over
            session.execute(sa.delete(Outbox).where(Outbox.id.in_(done)))
        if sent:
            publisher.send_many([_caption_on(queue, c.job_id, stamped[c.job_id]) for c in sent],
                                chunk=SEND_CHUNK)
        return len(sent)


def dispatch_queues(db: Database) -> list[str]:
    """The queues with batch jobs waiting in SQL."""
    with db.session() as session:
        return list(session.scalars(sa.select(Outbox.queue).where(Outbox.task == DISPATCH_BATCH).distinct()))


class Kicker:
    """Runs dispatches on a thread of its own when asked (:meth:`kick`), off the caller's path.

    A worker kicks after each claim: the claim took a message out of the window, so there is
    room. Kicks that arrive while a dispatch runs are answered by one more dispatch after it, and
    a dispatch that found another dispatcher holding the queue is retried shortly, because that
    one may have counted the room before the claim that caused the kick."""

    RETRY_SECONDS = 0.05

    def __init__(self, db: Database, publisher: Publisher, config: FairConfig) -> None:
        self.db = db
        self.publisher = publisher
        self.config = config
        self._pending: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="fair-dispatch", daemon=True)
        self._thread.start()

    def kick(self, queue: str = QUEUE_GPU) -> None:
        with self._cond:
            self._pending.add(queue)
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                queues, self._pending = self._pending, set()
            for queue in sorted(queues):
                try:
                    result = dispatch(self.db, self.publisher, self.config, queue)
                except Exception as exc:  # the next kick or the sweeper tops up instead
                    log.warning("dispatching queue %s failed: %s", queue, exc)
                    continue
                if result is None:  # held by another dispatcher: look again in a moment
                    with self._cond:
                        self._pending.add(queue)
                        self._cond.wait(self.RETRY_SECONDS)
