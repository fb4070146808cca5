"""Applying a state-machine transition to one job row, and its side effects.

:func:`apply` is the only code that changes ``jobs.status``. It reads the current status, and if
the transition allows it, issues ``UPDATE jobs SET … WHERE id = ? AND status IN (sources) AND
status = <seen> AND attempts = <seen>``. Zero rows means someone else changed the row in between:
it reads again (a few times) and otherwise gives up; a transition that does not apply to the
current status is a no-op returning None. A transition from a single source status with values
that do not depend on the row (the worker's claim and result) skips the read: its one
``UPDATE … WHERE status = <source> … RETURNING`` is the whole decision.

In the same transaction, :func:`after` adjusts the batch counters, finishes the batch when its
last job ended, counts an ended job's usage and takes it off the tenant's jobs in flight
(:mod:`jobs.usage`), and writes webhook messages and outbox rows into ``effects``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobs import outbox, usage, webhooks
from jobs.queue import Message
from jobs.render import batch_to_dict, job_to_dict
from jobs.states import EVENT_FOR_STATUS, START, SUCCEED, TERMINAL, BatchStatus, JobStatus, Transition
from jobs.tables import Batch, Job

Values = dict[str, Any] | Callable[[Any], dict[str, Any]]


@dataclass
class Effects:
    """Messages to write to the outbox in the current transaction (published after commit)."""

    messages: list[Message] = field(default_factory=list)

    def add(self, m: Message) -> None:
        self.messages.append(m)


@dataclass(frozen=True)
class Applied:
    job: Job
    previous: JobStatus


def apply(
    session: Session, job_id: str, t: Transition, values: Values, *,
    expected_attempt: int | None = None, extra_where: Iterable[Any] = (), retries: int = 5,
) -> Applied | None:
    """Apply ``t`` to job ``job_id`` with extra column ``values`` (a dict, or a function of the
    row seen: ``status``, ``attempts``, ``created_at``, ``started_at``). None when it does not
    apply."""
    if not callable(values) and len(t.sources) == 1:
        return _apply_from_one_source(session, job_id, t, values, expected_attempt, extra_where)
    sources = [s.value for s in t.sources]
    for _ in range(retries):
        seen = session.execute(
            sa.select(Job.status, Job.attempts, Job.created_at, Job.started_at).where(Job.id == job_id)
        ).first()
        if seen is None or seen.status not in sources:
            return None
        if expected_attempt is not None and seen.attempts != expected_attempt:
            return None
        vals = values(seen) if callable(values) else values
        stmt = (
            sa.update(Job)
            .where(Job.id == job_id, Job.status.in_(sources), Job.status == seen.status,
                   Job.attempts == seen.attempts, *extra_where)
            .values(status=t.target.value, **vals)
            .returning(Job)
            .execution_options(populate_existing=True, synchronize_session=False)
        )
        job = session.execute(stmt).scalar_one_or_none()
        if job is not None:
            return Applied(job, JobStatus(seen.status))
    return None


def _apply_from_one_source(
    session: Session, job_id: str, t: Transition, values: dict[str, Any], expected_attempt: int | None,
    extra_where: Iterable[Any],
) -> Applied | None:
    """One round trip: with a single source status and values that do not depend on the row,
    the conditional ``UPDATE … RETURNING`` alone decides (PostgreSQL re-checks its WHERE on the
    locked row, SQLite serialises writers), and the previous status can only be that source."""
    (source,) = t.sources
    where = [Job.id == job_id, Job.status == source.value, *extra_where]
    if expected_attempt is not None:
        where.append(Job.attempts == expected_attempt)
    stmt = (
        sa.update(Job).where(*where).values(status=t.target.value, **values).returning(Job)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    job = session.execute(stmt).scalar_one_or_none()
    return Applied(job, source) if job is not None else None


# --- the worker's two hot transitions, as statements built once ------------------------------
# The claim and the result run once per job on its critical path. Built once and run as Core
# statements — no per-call statement construction, no ORM execution machinery — they take about
# 0.8 ms instead of 1.5 ms on a small CPU (bench/RESULTS_worker.md); the conditions are exactly
# those :func:`apply` would use for the same call.


@functools.cache
def _claim_statement() -> sa.Update:
    t: sa.Table = Job.__table__  # type: ignore[assignment]
    (source,) = START.sources
    now = sa.bindparam("now", type_=t.c.started_at.type)
    return (
        sa.update(t)
        .where(t.c.id == sa.bindparam("job_id"), t.c.status == source.value,
               t.c.attempts < sa.bindparam("max_attempts"),
               sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now),
               sa.or_(sa.bindparam("any_model", type_=sa.Boolean()),
                      t.c.model == sa.bindparam("served_model", type_=t.c.model.type),
                      sa.and_(t.c.model.is_(None), sa.bindparam("unnamed", type_=sa.Boolean()))))
        .values(status=START.target.value, attempts=t.c.attempts + 1, started_at=now, partial_text=None,
                worker_id=sa.bindparam("worker_id", type_=t.c.worker_id.type),
                model_revision=sa.bindparam("revision", type_=t.c.model_revision.type))
        .returning(*t.c)
    )


@functools.cache
def _succeed_statement() -> sa.Update:
    t: sa.Table = Job.__table__  # type: ignore[assignment]
    (source,) = SUCCEED.sources
    return (
        sa.update(t)
        .where(t.c.id == sa.bindparam("job_id"), t.c.status == source.value,
               t.c.attempts == sa.bindparam("attempt"))
        .values(status=SUCCEED.target.value, output=sa.bindparam("output", type_=t.c.output.type),
                metrics=sa.bindparam("metrics", type_=t.c.metrics.type),
                finished_at=sa.bindparam("finished_at", type_=t.c.finished_at.type),
                partial_text=None, error=None)
        .returning(*t.c)
    )


@functools.cache
def _job_columns() -> list[tuple[str, Any]]:
    return [(prop.key, prop.columns[0]) for prop in sa.inspect(Job).column_attrs]


def _detached_job(row: Any) -> Job:
    """The returned row as a (transient) :class:`Job`, for :func:`after` and the caller."""
    values = row._mapping
    return Job(**{key: values[column] for key, column in _job_columns()})


def claim(session: Session, job_id: str, now: datetime, max_attempts: int,
          worker_id: str | None = None, served: ServedModel | None = None) -> Applied | None:
    """:data:`START` for a queued job that is not expired and has attempts left — and, with
    ``served``, is of that model: ``attempts`` + 1, ``started_at`` = ``now``, ``worker_id`` = the
    claiming worker, ``model_revision`` = the served checkpoint's. None when it does not apply."""
    served = served or ServedModel()
    row = session.execute(_claim_statement(), {
        "job_id": job_id, "now": now, "max_attempts": max_attempts, "worker_id": worker_id,
        "any_model": served.name is None, "served_model": served.name, "unnamed": served.takes_unnamed,
        "revision": served.revision}).first()
    return Applied(_detached_job(row), JobStatus.QUEUED) if row is not None else None


@dataclass(frozen=True)
class ServedModel:
    """The model a claiming worker runs: its registry name (None: any job), whether it also takes
    jobs stored before jobs named a model (the default model's workers do), and its checkpoint
    revision, recorded on the job it claims."""

    name: str | None = None
    takes_unnamed: bool = True
    revision: str | None = None

    def serves(self, model: str | None) -> bool:
        return self.name is None or model == self.name or (model is None and self.takes_unnamed)


def succeed(session: Session, job_id: str, attempt: int, output: dict[str, Any], metrics: dict[str, Any],
            now: datetime) -> Applied | None:
    """:data:`SUCCEED` for attempt ``attempt`` of a running job. None when it does not apply (the
    job moved on, or another attempt owns it)."""
    row = session.execute(_succeed_statement(), {"job_id": job_id, "attempt": attempt, "output": output,
                                                 "metrics": metrics, "finished_at": now}).first()
    return Applied(_detached_job(row), JobStatus.RUNNING) if row is not None else None


def apply_bulk(
    session: Session, job_ids: list[str], t: Transition, source: JobStatus, values: dict[str, Any],
) -> list[Job]:
    """Apply ``t`` to the jobs among ``job_ids`` that are in ``source`` (one of its sources), in
    one ``UPDATE … WHERE id IN (…) AND status = <source>``; returns the jobs it applied to."""
    if source not in t.sources:
        raise ValueError(f"{t.name} does not start from {source}")
    if not job_ids:
        return []
    stmt = (
        sa.update(Job).where(Job.id.in_(job_ids), Job.status == source.value)
        .values(status=t.target.value, **values).returning(Job)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return list(session.execute(stmt).scalars())


def after(session: Session, applied: Applied, now: datetime, effects: Effects) -> None:
    """Side effects of one applied transition, in the same transaction."""
    job, prev = applied.job, applied.previous
    new = JobStatus(job.status)
    if job.batch_id is not None and prev != new:
        bump_batch(session, job.batch_id, {prev: -1, new: +1}, now, effects)
    if new == JobStatus.QUEUED:  # requeued: a fresh message for the gpu queue
        effects.add(outbox.caption_message(job.id, job.priority, job.model))
    if prev != new:
        emit_job_event(session, job, now, effects)
    if new.terminal and not prev.terminal:
        usage.record_ended(session, [job], now)


def after_bulk(session: Session, jobs: list[Job], prev: JobStatus, now: datetime, effects: Effects) -> None:
    """:func:`after` for many jobs that made the same move (batch counters summed per batch)."""
    per_batch: dict[str, int] = {}
    for job in jobs:
        if job.batch_id is not None:
            per_batch[job.batch_id] = per_batch.get(job.batch_id, 0) + 1
        if job.status == JobStatus.QUEUED.value:
            effects.add(outbox.caption_message(job.id, job.priority, job.model))
        emit_job_event(session, job, now, effects)
    for batch_id, n in per_batch.items():
        new = JobStatus(jobs[0].status)
        bump_batch(session, batch_id, {prev: -n, new: +n}, now, effects)
    if jobs and JobStatus(jobs[0].status).terminal and not prev.terminal:
        usage.record_ended(session, jobs, now)
    elif jobs and prev.terminal and not JobStatus(jobs[0].status).terminal:  # a batch retry
        usage.record_reopened(session, jobs)


def emit_job_event(session: Session, job: Job, now: datetime, effects: Effects) -> None:
    """The webhook for the job's new status, if its webhook subscribed to that event."""
    event = EVENT_FOR_STATUS.get(JobStatus(job.status))
    if event and job.webhook_url and event in (job.webhook_events or ()):
        effects.add(webhooks.new_message(
            session, tenant_id=job.tenant_id, type=event, url=job.webhook_url,
            payload=job_to_dict(job), job_id=job.id, batch_id=job.batch_id, now=now,
        ))


def bump_batch(
    session: Session, batch_id: str, delta: dict[JobStatus, int], now: datetime, effects: Effects,
) -> Batch | None:
    """Move counters (``{status: +n/-n}``) on the batch row; finish the batch if that ended it."""
    cols = Batch.__table__.c
    values: dict[str, Any] = {}
    for status, n in delta.items():
        if n:
            values[status.value] = cols[status.value] + n
    if not values:
        return None
    started = any(s != JobStatus.QUEUED and n > 0 for s, n in delta.items())
    if started:  # the first job to start or end moves a queued batch to running
        values["status"] = sa.case((cols.status == BatchStatus.QUEUED.value, BatchStatus.RUNNING.value),
                                   else_=cols.status)
    batch = session.execute(
        sa.update(Batch).where(Batch.id == batch_id).values(**values).returning(Batch)
        .execution_options(populate_existing=True, synchronize_session=False)
    ).scalar_one_or_none()
    ended_now = sum(n for s, n in delta.items() if s in TERMINAL and n > 0)
    if batch is not None and all_ended(batch) and ended_now:
        on_last_job_ended(session, batch, now, effects)
    elif batch is not None and ended_now and batch.output_formats:
        # Incremental outputs: another part_rows jobs ended, some output part may be complete.
        ended = batch.succeeded + batch.failed + batch.canceled
        if (ended - ended_now) // batch.part_rows != ended // batch.part_rows:
            effects.add(outbox.export_message(batch.id, ended // batch.part_rows))
    return batch


def all_ended(batch: Batch) -> bool:
    return batch.total > 0 and batch.succeeded + batch.failed + batch.canceled >= batch.total


def on_last_job_ended(session: Session, batch: Batch, now: datetime, effects: Effects) -> None:
    """The batch's last job ended: results go to ``output_url`` first (the finalize task, then
    :func:`finalize`), else the batch is finished right here."""
    if batch.finalized_at is not None:
        return
    if batch.output_url:
        effects.add(outbox.finalize_message(batch.id))
    else:
        finalize(session, batch.id, now, effects)


def finalize(session: Session, batch_id: str, now: datetime, effects: Effects) -> Batch | None:
    """Mark the batch finished (once): status ``expired`` if its completion window ended it,
    ``canceled`` if a cancel was requested, else
    ``completed``; ``finished_at``; the ``batch.completed`` webhook if subscribed. None if
    already finalized."""
    cols = Batch.__table__.c
    batch = session.execute(
        sa.update(Batch).where(Batch.id == batch_id, Batch.finalized_at.is_(None))
        .values(
            finalized_at=now, finished_at=now,
            status=sa.case((cols.expired_at.is_not(None), BatchStatus.EXPIRED.value),
                           (cols.cancel_requested_at.is_not(None), BatchStatus.CANCELED.value),
                           else_=BatchStatus.COMPLETED.value),
        )
        .returning(Batch)
        .execution_options(populate_existing=True, synchronize_session=False)
    ).scalar_one_or_none()
    if batch is None:
        return None
    if batch.webhook_url and "batch.completed" in (batch.webhook_events or ()):
        effects.add(webhooks.new_message(
            session, tenant_id=batch.tenant_id, type="batch.completed", url=batch.webhook_url,
            payload=batch_to_dict(batch), batch_id=batch.id, now=now,
        ))
    return batch
