"""The sweeper's recovery of lost work: the invariant it keeps, and how.

**Every ``queued`` job has a caption message in the broker, or gets one within a sweep interval
after ``queued_resend_seconds``.** A message can be lost with the job still ``queued``: a broker
restarted without persistence, a worker killed after taking the message and before its claim
(the message is neither in the queue nor yet in kombu's ``unacked``), a claim undone by a
database crash whose worker could not ask for redelivery. Such a job would wait until its TTL.

- :func:`resend_queued` re-sends the message of a job queued longer than ``queued_resend_seconds``
  after its last dispatch (``dispatched_at``, else ``created_at``), and stamps ``dispatched_at``
  in the same conditional UPDATE, so each job gets at most one extra message per period and two
  sweepers never pick the same job. Skipped: jobs whose message still waits in the outbox
  (``outbox.republish_stale`` sends those) and batch jobs a bounded dispatch has not reached yet.
  On Redis it first compares, model by model, the queued jobs with the messages waiting in
  that model's queue and re-sends only as many (oldest first) as are missing, so a long backlog
  is not doubled every period, and a model without workers never looks as if another model's
  messages were its own. A duplicate is harmless: the claim is a conditional UPDATE, the second
  one is a no-op.
- :func:`recover_dead_workers` requeues (keeping the attempt cap: ``worker_lost`` once it is used
  up) the running jobs of GPU workers whose heartbeat (:mod:`jobs.heartbeats`) is older than
  ``worker_dead_seconds``. It only judges while this process's previous sweep reached the
  database, so a database outage, which silences every heartbeat, does not look like every worker
  dying.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobs import heartbeats, outbox
from jobs import transitions as tx
from jobs.queue import caption_queue
from jobs.service import JobService
from jobs.states import FAIL, REQUEUE, JobStatus
from jobs.tables import Job, Outbox, Worker

log = logging.getLogger(__name__)

CHUNK = 1000


def resend_queued(service: JobService, now: datetime, limit: int = CHUNK) -> int:
    """Re-send the caption message of queued jobs that may have lost it (module docs), model by
    model (each has its own queue)."""
    if service.publisher is None:
        return 0
    with service.db.session() as session:
        models = list(session.scalars(sa.select(Job.model).where(Job.status == JobStatus.QUEUED.value)
                                      .group_by(Job.model)))
    return sum(_resend_queued(service, now, model, limit) for model in models)


def _resend_queued(service: JobService, now: datetime, model: str | None, limit: int) -> int:
    assert service.publisher is not None
    cutoff = now - timedelta(seconds=service.settings.queued_resend_seconds)
    sent_at = sa.func.coalesce(Job.dispatched_at, Job.created_at)
    in_outbox = sa.select(Outbox.task_id).where(Outbox.task == outbox.TASK_CAPTION)
    dispatching = sa.select(Outbox.args[0].as_string()).where(Outbox.task == outbox.DISPATCH_BATCH)
    # Queued jobs that should have a message in the broker: sent, not waiting in the outbox or
    # behind a batch dispatch.
    sent = [
        Job.status == JobStatus.QUEUED.value, Job.model.is_(None) if model is None else Job.model == model,
        Job.id.not_in(in_outbox),
        sa.or_(Job.dispatched_at.is_not(None), Job.batch_id.is_(None), Job.batch_id.not_in(dispatching)),
    ]
    eligible = [*sent, sent_at <= cutoff]
    with service.db.session() as session:
        candidates = int(session.scalar(sa.select(sa.func.count()).select_from(Job).where(*eligible)) or 0)
        if not candidates:
            return 0
        queued = int(session.scalar(sa.select(sa.func.count()).select_from(Job).where(*sent)) or 0)
    ready = service.publisher.ready_count(caption_queue(model))
    # Every such job accounts for one waiting message (or one a worker took and has not claimed
    # yet); fewer waiting messages than jobs means some are missing.
    missing = candidates if ready is None else min(candidates, queued - ready)
    if missing <= 0:
        return 0
    pick = sa.select(Job.id).where(*eligible).order_by(sent_at, Job.id).limit(min(limit, missing))
    with service.db.session() as session:
        rows = session.execute(
            sa.update(Job).where(Job.id.in_(pick.scalar_subquery()), Job.status == JobStatus.QUEUED.value,
                                 sent_at <= cutoff)
            .values(dispatched_at=now).returning(Job.id, Job.priority)
            .execution_options(synchronize_session=False)
        ).all()
        out = outbox.add(session, [outbox.caption_message(r.id, r.priority, model) for r in rows], now)
    service.publish(out)
    if rows:
        log.warning("re-sent the caption message of %d job(s) queued for more than %.0f s "
                    "(%s messages waiting in %s)", len(rows), service.settings.queued_resend_seconds,
                    "?" if ready is None else ready, caption_queue(model))
    return len(rows)


@dataclass
class _Judge:
    """When this process's last sweep reached the database (monotonic seconds)."""

    last_ok: float | None = None


_judge = _Judge()


def recover_dead_workers(service: JobService, now: datetime) -> tuple[int, int]:
    """Requeue or fail the running jobs of silent GPU workers; returns (requeued, lost)."""
    s = service.settings
    previous, _judge.last_ok = _judge.last_ok, time.monotonic()
    if previous is None or time.monotonic() - previous > s.worker_dead_seconds / 2 + s.sweep_interval_seconds:
        return 0, 0  # the database was out of reach (or this is the first sweep): judge next time
    dead = heartbeats.dead_workers(service.db, s.worker_dead_seconds, now)
    requeued = lost = 0
    for worker_id in dead:
        with service.db.session() as session:
            rows = session.execute(
                sa.select(Job.id, Job.attempts)
                .where(Job.status == JobStatus.RUNNING.value, Job.worker_id == worker_id)
            ).all()
        r, x = requeue_or_fail(service, rows, now, f"its worker {worker_id} stopped sending heartbeats")
        requeued, lost = requeued + r, lost + x
        with service.db.session() as session:
            # Forget the worker once none of its jobs is left running (a slow one re-registers).
            still = sa.select(Job.id).where(Job.status == JobStatus.RUNNING.value, Job.worker_id == worker_id)
            session.execute(sa.delete(Worker).where(Worker.id == worker_id, Worker.last_seen
                                                    <= now - timedelta(seconds=s.worker_dead_seconds),
                                                    ~sa.exists(still)))
        if rows:
            log.warning("worker %s is silent: %d of its running jobs requeued, %d failed", worker_id, r, x)
    return requeued, lost


def requeue_or_fail(service: JobService, rows: Any, now: datetime, why: str) -> tuple[int, int]:
    """For running jobs (``id``, ``attempts``) whose worker is gone (``why``, for the log): back
    to queued with a fresh message while attempts remain, else failed with ``worker_lost``.
    Conditional on the attempt seen, so a job that moved on meanwhile is left alone. Returns
    (requeued, lost)."""
    requeued = lost = 0
    cap = service.settings.max_attempts
    for row in rows:
        effects = tx.Effects()
        with service.db.session() as session:
            if row.attempts < cap:
                applied = tx.apply(session, row.id, REQUEUE, {"started_at": None, "partial_text": None,
                                                              "worker_id": None, "dispatched_at": now},
                                   expected_attempt=row.attempts)
                requeued += applied is not None
            else:
                applied = tx.apply(session, row.id, FAIL, {
                    "finished_at": now, "partial_text": None,
                    "error": {"code": "worker_lost", "retryable": False,
                              "message": f"the worker running the job was lost {row.attempts} times"},
                }, expected_attempt=row.attempts)
                lost += applied is not None
            if applied is not None:
                log.info("job %s: %s", row.id, why)
                tx.after(session, applied, now, effects)
            out = outbox.add(session, effects.messages, now)
        service.publish(out)
    return requeued, lost
