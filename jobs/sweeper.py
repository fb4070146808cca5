"""The sweeper: periodic repair, run by Celery beat (task ``captionq.sweep``) or local mode.

Each call does, in bounded chunks, each chunk its own short transaction:

1. re-publish outbox rows committed more than ``outbox_grace_seconds`` ago and still unsent
   (the broker was down, or the process died between commit and publish), and refill the
   window of every GPU queue with batch jobs waiting in SQL (``dispatch_window``,
   :mod:`jobs.fair_dispatch`);
2. fail queued jobs past their TTL with ``expired``, and the queued jobs of batches past their
   completion window with ``batch_expired`` (``jobs.batch_retry``);
3. recover jobs stuck in ``running`` longer than ``job_hard_time_limit + stuck_grace_seconds``
   (their worker died without the broker redelivering): requeue them while attempts remain,
   else fail them with ``worker_lost`` — the attempt count lives in SQL;
   and, sooner, the running jobs of GPU workers whose heartbeat stopped (``jobs.recovery``);
4. re-send the caption message of jobs queued too long after their last dispatch: the
   invariant "every queued job has a message in the broker" (``jobs.recovery``);
5. re-send ``finalize_batch`` for batches whose jobs all ended long ago but that were never
   finalized (a lost finalize message);
6. drop expired Idempotency-Key records.

Everything is a conditional transition, so two sweepers at once, or a sweeper racing a worker,
change nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from core.db import utcnow
from jobs import batch_retry, outbox, recovery
from jobs import transitions as tx
from jobs.service import JobService
from jobs.states import EXPIRE, JobStatus
from jobs.tables import Batch, IdempotencyKey, Job

log = logging.getLogger(__name__)

CHUNK = 500
EXPIRED_MESSAGE = "the job was not started before its ttl_seconds passed"


@dataclass
class SweepReport:
    republished: int = 0
    dispatched: int = 0  # caption messages of bounded batch dispatches (top-ups)
    expired: int = 0
    window_expired: int = 0  # queued jobs of batches past their completion window
    requeued: int = 0
    lost: int = 0
    resent: int = 0  # caption messages re-sent for jobs queued too long
    finalize_resent: int = 0
    idempotency_dropped: int = 0


def sweep(service: JobService, *, now: datetime | None = None, max_rows: int = 20_000) -> SweepReport:
    """One pass of every repair above. ``now`` is for tests."""
    now = now or utcnow()
    s = service.settings
    report = SweepReport()
    if service.publisher is not None:
        report.republished = outbox.republish_stale(service.db, service.publisher, s.outbox_grace_seconds,
                                                    now=now)
        # The fair dispatcher's window is refilled every sweep (and by every worker claim); a
        # second sweeper finds the queue locked and leaves it to the first.
        report.dispatched = outbox.top_up_dispatches(service.db, service.publisher, service.fair)
    report.expired = _expire(service, now, max_rows)
    report.window_expired = batch_retry.expire_windows(service, now)
    stuck_before = now - timedelta(seconds=s.job_hard_time_limit + s.stuck_grace_seconds)
    report.requeued, report.lost = _recover_stuck(service, now, stuck_before, max_rows)
    requeued, lost = recovery.recover_dead_workers(service, now)
    report.requeued += requeued
    report.lost += lost
    report.resent = recovery.resend_queued(service, now)
    report.finalize_resent = _resend_finalize(service, now)
    with service.db.session() as session:
        res = session.execute(sa.delete(IdempotencyKey).where(
            IdempotencyKey.created_at < now - timedelta(seconds=s.idempotency_ttl_seconds)))
        report.idempotency_dropped = res.rowcount or 0  # type: ignore[attr-defined]
    if any(vars(report).values()):
        log.info("sweep: %s", report)
    return report


def _expire(service: JobService, now: datetime, max_rows: int) -> int:
    total = 0
    while total < max_rows:
        effects = tx.Effects()
        with service.db.session() as session:
            ids_ = list(session.scalars(
                sa.select(Job.id).where(Job.status == JobStatus.QUEUED.value, Job.expires_at <= now)
                .order_by(Job.expires_at).limit(CHUNK)
            ))
            if not ids_:
                break
            done = tx.apply_bulk(session, ids_, EXPIRE, JobStatus.QUEUED, {
                "finished_at": now, "partial_text": None,
                "error": {"code": "expired", "message": EXPIRED_MESSAGE, "retryable": False},
            })
            tx.after_bulk(session, done, JobStatus.QUEUED, now, effects)
            out = outbox.add(session, effects.messages, now)
        service.publish(out)
        total += len(done)
        if len(ids_) < CHUNK:
            break
    return total


def _recover_stuck(service: JobService, now: datetime, before: datetime, max_rows: int) -> tuple[int, int]:
    with service.db.session() as session:
        rows = session.execute(
            sa.select(Job.id, Job.attempts)
            .where(Job.status == JobStatus.RUNNING.value, Job.started_at <= before)
            .order_by(Job.started_at).limit(max_rows)
        ).all()
    return recovery.requeue_or_fail(service, rows, now, "running past the time limit")


def _resend_finalize(service: JobService, now: datetime) -> int:
    """Batches whose jobs all ended a while ago but were never finalized get their finalize
    message again (the finalize task is idempotent)."""
    older = now - timedelta(seconds=max(service.settings.outbox_grace_seconds * 10, 300))
    with service.db.session() as session:
        ids_ = list(session.scalars(
            sa.select(Batch.id).where(
                Batch.finalized_at.is_(None), Batch.output_url.is_not(None),
                Batch.succeeded + Batch.failed + Batch.canceled >= Batch.total, Batch.total > 0,
                Batch.created_at <= older,
            ).limit(100)
        ))
        if not ids_:
            return 0
        # Not already waiting in the outbox?
        pending = set(session.scalars(sa.select(outbox.Outbox.task_id).where(
            outbox.Outbox.task_id.in_([f"{b}-finalize" for b in ids_]))))
        todo = [b for b in ids_ if f"{b}-finalize" not in pending]
        out = outbox.add(session, [outbox.finalize_message(b) for b in todo], now)
    service.publish(out)
    return len(todo)
