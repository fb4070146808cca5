"""Retry, completion windows and resume for batches.

- **Retry** (``POST /v1/batches/{id}/retry``): the batch's failed jobs (all, or those with the
  given error codes) go back to ``queued`` by the ``retry`` transition as new attempts of the same
  jobs (attempt count reset, error cleared), in chunks of one transaction each. A finished batch
  is opened again (``running``, not finalized) and its output parts from the first retried item
  on are written again when their jobs end.
- **Completion window**: a batch whose ``expires_at`` passed is ended by the sweeper: it gets
  ``expired_at``, its queued jobs fail with code ``batch_expired``, running ones finish, and the
  batch is finalized as ``expired`` with the partial results.
- **Resume** (``resume_from``): items whose ``custom_id`` succeeded in the earlier batch are left
  out of the new one, looked up a chunk at a time (the ``(batch_id, custom_id)`` index).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any

import pydantic_core
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from core.db import Database, utcnow
from core.errors import BatchExpired, InvalidRequest, NotFound
from jobs import outbox
from jobs import transitions as tx
from jobs.requests import error, pydantic_errors
from jobs.service import JobService
from jobs.states import FAIL, RETRY, BatchStatus, JobStatus
from jobs.tables import Batch, Job


class BatchRetryRequest(BaseModel):
    """The body of ``POST /v1/batches/{id}/retry`` (optional: no body retries every failure)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    error_codes: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] | None = Field(
        None, min_length=1, max_length=50, description="Only failures with one of these codes")


def parse_retry(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    try:
        return BatchRetryRequest.model_validate(raw).error_codes
    except ValidationError as exc:
        errs = pydantic_errors(exc, [])
        raise InvalidRequest(f"{len(errs)} invalid field(s)", errors=errs) from None


CHUNK = 500
EXPIRED_CODE = BatchExpired.code
EXPIRED_MESSAGE = "the batch's completion window ended before this job started"


def retry_batch(service: JobService, tenant_id: str, batch_id: str,
                codes: list[str] | None) -> tuple[Batch, int]:
    """Requeue the batch's failed jobs (with one of ``codes``, if given). Returns the batch and
    how many jobs were requeued."""
    now = utcnow()
    with service.db.session() as session:
        batch = session.scalar(sa.select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id))
        if batch is None:
            raise NotFound(f"no batch {batch_id!r}")
    last_seq, total = -1, 0
    while True:
        effects = tx.Effects()
        with service.db.session() as session:
            rows = session.execute(
                sa.select(Job.id, Job.seq, Job.error, Job.request).where(
                    Job.batch_id == batch_id, Job.seq > last_seq, Job.status == JobStatus.FAILED.value)
                .order_by(Job.seq).limit(CHUNK)
            ).all()
            if not rows:
                break
            last_seq = rows[-1].seq
            chosen = [r for r in rows if codes is None or (r.error or {}).get("code") in codes]
            # One UPDATE per time-to-live (the request's ttl_seconds; nearly always one value).
            by_ttl: dict[int, list[Any]] = {}
            for r in chosen:
                by_ttl.setdefault(int((r.request or {}).get("ttl_seconds") or 86400), []).append(r)
            if chosen:
                _reopen(session, batch_id, min(r.seq for r in chosen))
            for ttl, group in by_ttl.items():
                # Each retried job's caption message goes out with this commit (tx.after_bulk), so
                # it is stamped as sent: the fair dispatcher counts it in the broker's window and
                # never sends it a second time.
                done = tx.apply_bulk(session, [r.id for r in group], RETRY, JobStatus.FAILED, {
                    "error": None, "output": None, "metrics": None, "partial_text": None, "attempts": 0,
                    "started_at": None, "finished_at": None, "worker_id": None, "dispatched_at": now,
                    "cancel_requested": False, "expires_at": now + timedelta(seconds=ttl),
                })
                tx.after_bulk(session, done, JobStatus.FAILED, now, effects)
                total += len(done)
            ids_ = outbox.add(session, effects.messages, now)
        service.publish(ids_)
    with service.db.session() as session:
        batch = session.execute(sa.select(Batch).where(Batch.id == batch_id)
                                .execution_options(populate_existing=True)).scalar_one()
    return batch, total


def _reopen(session: Any, batch_id: str, first_seq: int) -> None:
    """A batch with jobs queued again is not finished: not finalized, status running, no
    completion window or expiry (a retry is the caller asking for more time), and its output
    parts from ``first_seq`` on are written again."""
    cols = Batch.__table__.c
    session.execute(sa.update(Batch).where(Batch.id == batch_id).values(
        finalized_at=None, finished_at=None, expired_at=None, expires_at=None,
        status=BatchStatus.RUNNING.value,
        parts_done=sa.case((cols.parts_done > first_seq // cols.part_rows, first_seq // cols.part_rows),
                           else_=cols.parts_done),
    ))


def expire_windows(service: JobService, now: datetime | None = None, limit: int = 100) -> int:
    """The sweeper's part: batches past their completion window get ``expired_at`` and their
    queued jobs fail with ``batch_expired``. Returns how many jobs were failed."""
    now = now or utcnow()
    with service.db.session() as session:
        ids_ = list(session.scalars(sa.select(Batch.id).where(
            Batch.finalized_at.is_(None), Batch.expires_at.is_not(None), Batch.expires_at <= now,
        ).limit(limit)))
        if ids_:
            session.execute(sa.update(Batch).where(Batch.id.in_(ids_), Batch.expired_at.is_(None))
                            .values(expired_at=now))
    failed = 0
    for batch_id in ids_:
        failed += _fail_queued(service, batch_id, now)
    return failed


def _fail_queued(service: JobService, batch_id: str, now: datetime) -> int:
    total = 0
    while True:
        effects = tx.Effects()
        with service.db.session() as session:
            job_ids = list(session.scalars(sa.select(Job.id).where(
                Job.batch_id == batch_id, Job.status == JobStatus.QUEUED.value,
            ).order_by(Job.seq).limit(CHUNK)))
            if not job_ids:
                break
            done = tx.apply_bulk(session, job_ids, FAIL, JobStatus.QUEUED, {
                "finished_at": now, "partial_text": None,
                "error": {"code": EXPIRED_CODE, "message": EXPIRED_MESSAGE, "retryable": False},
            })
            tx.after_bulk(session, done, JobStatus.QUEUED, now, effects)
            ids_ = outbox.add(session, effects.messages, now)
        service.publish(ids_)
        total += len(done)
    return total


def check_resume(db: Database, tenant_id: str, batch_id: str) -> None:
    with db.session() as session:
        found = session.scalar(sa.select(Batch.id).where(Batch.id == batch_id, Batch.tenant_id == tenant_id))
    if found is None:
        raise InvalidRequest(f"resume_from: no batch {batch_id!r}",
                             errors=[error(["resume_from"], f"no batch {batch_id!r}", "not_found")])


def skip_succeeded(db: Database, batch_id: str, lines: Iterable[tuple[int, Any]],
                   chunk: int = 1000) -> Iterator[tuple[int, Any]]:
    """``lines`` without the items whose ``custom_id`` succeeded in batch ``batch_id``. Manifest
    lines (text) are parsed here to see their ``custom_id``; a line that is not JSON passes on
    (validation reports it)."""
    buf: list[tuple[int, Any, str | None]] = []

    def flush() -> Iterator[tuple[int, Any]]:
        wanted = [c for _, _, c in buf if c is not None]
        done: set[str] = set()
        if wanted:
            with db.session() as session:
                done = set(session.scalars(sa.select(Job.custom_id).where(
                    Job.batch_id == batch_id, Job.custom_id.in_(wanted),
                    Job.status == JobStatus.SUCCEEDED.value)))
        for n, obj, cid in buf:
            if cid is None or cid not in done:
                yield n, obj
        buf.clear()

    for n, raw in lines:
        obj = raw
        if isinstance(raw, str | bytes):
            try:
                obj = pydantic_core.from_json(raw, allow_inf_nan=False) if raw.strip() else raw
            except ValueError:
                obj = raw
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        buf.append((n, obj, cid if isinstance(cid, str) else None))
        if len(buf) >= chunk:
            yield from flush()
    yield from flush()


__all__ = [
    "EXPIRED_CODE", "BatchRetryRequest", "check_resume", "expire_windows", "parse_retry", "retry_batch",
    "skip_succeeded",
]
