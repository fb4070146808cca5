"""The worker-facing half of :class:`jobs.service.JobService`: claim, progress, outcome.

Everything here is safe to call twice (a redelivered message, a repeated call): each change is a
conditional transition of :mod:`jobs.transitions`.

- :meth:`WorkerTransitions.start` — claim a job: the normalised request (a :class:`ClaimedJob`)
  or None; :meth:`~WorkerTransitions.claim_lost` — whether a claim was lost by the database.
- :meth:`~WorkerTransitions.set_partial_text` / :meth:`~WorkerTransitions.is_cancel_requested` —
  during generation.
- :meth:`~WorkerTransitions.succeed` / :meth:`~WorkerTransitions.fail` /
  :meth:`~WorkerTransitions.mark_canceled` — record the end; :meth:`~WorkerTransitions.requeue`
  and :meth:`~WorkerTransitions.expire` — the sweeper's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from core.db import Database
from core.settings import Settings
from jobs import transitions as tx
from jobs.states import CANCEL, EXPIRE, FAIL, REQUEUE, RESTART, START, SUCCEED, JobStatus
from jobs.tables import Job

log = logging.getLogger(__name__)


class ClaimedJob(dict[str, Any]):
    """What :meth:`JobService.start` returns: the job's normalised request (this dict itself:
    ``media``, ``prompts``, ``generation``…) plus ``job_id``, ``attempt`` (pass it back to
    succeed/fail so a superseded attempt cannot record), ``tenant_id``, ``batch_id``,
    ``created_at``, ``started_at`` (this attempt's start) and ``trace_context`` (the submitting
    request's, see core.tracing)."""

    def __init__(self, request: dict[str, Any], *, job_id: str, attempt: int, tenant_id: str,
                 batch_id: str | None, created_at: datetime, started_at: datetime | None = None,
                 trace_context: dict[str, str] | None = None) -> None:
        super().__init__(request)
        self.job_id = job_id
        self.attempt = attempt
        self.tenant_id = tenant_id
        self.batch_id = batch_id
        self.created_at = created_at
        self.started_at = started_at
        self.trace_context = trace_context

    @property
    def request(self) -> dict[str, Any]:
        return dict(self)


class WorkerTransitions:
    """Base of :class:`jobs.service.JobService`, which provides ``db``, ``settings`` and
    ``_run`` (one transaction, then its outbox rows published)."""

    db: Database
    settings: Settings

    def _run(self, fn: Any, *args: Any, before_publish: Callable[[], object] | None = None,
             relaxed: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError

    def start(self, job_id: str, *, redelivered: bool = False, worker_id: str | None = None,
              served: tx.ServedModel | None = None) -> ClaimedJob | None:
        """Claim ``job_id`` for this delivery: queued → running, ``attempts`` + 1.

        Returns the normalised request (a :class:`ClaimedJob`), or None when there is nothing to
        run: unknown job, already running elsewhere, finished, canceled, or expired (a queued job
        past its TTL is failed with ``expired`` here instead of running late). With
        ``redelivered=True`` (Celery redelivered the message because its worker died) a job left
        in ``running`` is taken over too. When the attempt cap (``settings.max_attempts``) is
        already used up the job fails with ``worker_lost`` and None is returned. ``worker_id``
        (the heartbeat of the worker claiming it, :mod:`jobs.heartbeats`) is recorded on the job,
        so that the sweeper requeues it soon after that worker goes silent. ``served`` (the
        model the worker runs) claims only that model's jobs and records its revision: a job of
        another model (a message that reached the wrong queue) is left queued, and the sweeper
        re-sends its message to its own model's queue (``jobs.recovery.resend_queued``).
        """
        if not redelivered:
            # The common case, in one statement: a queued job, not expired, attempts left. Its
            # commit does not wait for the WAL flush (~0.5 ms, a third of a short job's service
            # time): the job's result commits synchronously later in the same WAL, which makes
            # the claim durable too. Only a PostgreSQL crash while the job runs can lose it; the
            # job is then back to queued with the previous attempt count, which the worker
            # notices when recording (``claim_lost``) and answers with a redelivery.
            claimed = self._run(self._claim, job_id, worker_id, served, relaxed=True)
            if claimed is not None:
                return claimed  # type: ignore[no-any-return]
        return self._run(self._start, job_id, redelivered, worker_id, served)  # type: ignore[no-any-return]

    def _claim(self, session: Any, effects: tx.Effects, now: datetime, job_id: str,
               worker_id: str | None, served: tx.ServedModel | None) -> ClaimedJob | None:
        applied = tx.claim(session, job_id, now, self.settings.max_attempts, worker_id, served)
        return self._claimed(session, effects, now, applied) if applied is not None else None

    def _start(self, session: Any, effects: tx.Effects, now: datetime, job_id: str,
               redelivered: bool, worker_id: str | None, served: tx.ServedModel | None) -> ClaimedJob | None:
        # Not claimable in one statement: read the row to say why not (expired, attempt cap,
        # another model's job) or to take over a job a dead worker left running (redelivered).
        row = session.execute(
            sa.select(Job.status, Job.attempts, Job.expires_at, Job.model).where(Job.id == job_id)
        ).first()
        if row is None:
            return None
        served = served or tx.ServedModel()
        if not served.serves(row.model):
            log.warning("job %s is for model %s, not %s: left for that model's workers", job_id,
                        row.model, served.name)
            return None
        if row.status == JobStatus.QUEUED.value and row.expires_at is not None and row.expires_at <= now:
            self._fail_in(session, effects, now, job_id, "expired",
                          "the job was not started before its ttl_seconds passed", EXPIRE)
            return None
        t = RESTART if redelivered else START
        if not t.allowed_from(row.status):
            return None
        if row.attempts >= self.settings.max_attempts:
            self._fail_in(session, effects, now, job_id, "worker_lost",
                          f"the job was delivered {row.attempts} times without finishing "
                          f"(limit {self.settings.max_attempts})", FAIL)
            return None
        applied = tx.apply(session, job_id, t, lambda seen: {
            "attempts": seen.attempts + 1, "started_at": now, "partial_text": None, "worker_id": worker_id,
            "model_revision": served.revision,
        })
        if applied is None:
            return None
        return self._claimed(session, effects, now, applied)

    @staticmethod
    def _claimed(session: Any, effects: tx.Effects, now: datetime, applied: tx.Applied) -> ClaimedJob:
        tx.after(session, applied, now, effects)
        job = applied.job
        return ClaimedJob(job.request, job_id=job.id, attempt=job.attempts, tenant_id=job.tenant_id,
                          batch_id=job.batch_id, created_at=job.created_at, started_at=job.started_at,
                          trace_context=job.trace_context)

    def claim_lost(self, job_id: str, attempt: int) -> bool:
        """True when attempt ``attempt``'s claim is gone: the job is queued again with the
        attempt count from before it (a database crash lost the claim's asynchronous commit; a
        requeue by the sweeper keeps the count). Its message must be delivered again."""
        with self.db.session() as session:
            row = session.execute(sa.select(Job.status, Job.attempts).where(Job.id == job_id)).first()
        return row is not None and row.status == JobStatus.QUEUED.value and row.attempts == attempt - 1

    def set_partial_text(self, job_id: str, text: str) -> bool:
        """Store the text generated so far for the current round (while running). Returns False
        when the job is no longer running (stop working on it)."""
        with self.db.session() as session:
            res = session.execute(
                sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
                .values(partial_text=text)
            )
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def is_cancel_requested(self, job_id: str) -> bool:
        """True when the worker should stop: cancel was requested, or the job is no longer
        running (canceled, failed by the sweeper, requeued to another worker, or gone)."""
        with self.db.session() as session:
            row = session.execute(
                sa.select(Job.status, Job.cancel_requested).where(Job.id == job_id)
            ).first()
        return row is None or row.status != JobStatus.RUNNING.value or bool(row.cancel_requested)

    def succeed(self, job_id: str, output: dict[str, Any], metrics: dict[str, Any] | None = None,
                *, attempt: int | None = None, claim: ClaimedJob | None = None) -> bool:
        """running → succeeded with ``output`` (``text``, ``rounds``, ``boxes``…) and ``metrics``
        (``tiles``, ``frames``, ``input_tokens``, ``output_tokens``, ``model``…; ``queued_seconds``
        and ``run_seconds`` are added here). False if it did not apply (no-op)."""
        return self.succeed_job(job_id, output, metrics, attempt=attempt, claim=claim) is not None

    def succeed_job(self, job_id: str, output: dict[str, Any], metrics: dict[str, Any] | None = None,
                    *, attempt: int | None = None, claim: ClaimedJob | None = None) -> Job | None:
        """:meth:`succeed`, returning the finished job (None: it did not apply). ``claim`` — the
        :class:`ClaimedJob` of this attempt — stands for ``attempt`` and supplies the times the
        metrics need, so the record is one ``UPDATE … RETURNING`` without reading the row first."""
        return self._run(self._succeed, job_id, output, metrics or {}, attempt, claim)  # type: ignore[no-any-return]

    def _succeed(self, session: Any, effects: tx.Effects, now: datetime, job_id: str,
                 output: dict[str, Any], metrics: dict[str, Any], attempt: int | None,
                 claim: ClaimedJob | None) -> Job | None:
        def values(seen: Any) -> dict[str, Any]:
            return {"output": output, "metrics": timing(seen, now) | metrics, "finished_at": now,
                    "partial_text": None, "error": None}

        if claim is not None and claim.started_at is not None:
            # Same attempt ⇒ same started_at (only a claim sets it and bumps attempts).
            v = values(claim)
            applied = tx.succeed(session, job_id, claim.attempt, v["output"], v["metrics"], now)
        else:
            applied = tx.apply(session, job_id, SUCCEED, values, expected_attempt=attempt)
        if applied is None:
            return None
        tx.after(session, applied, now, effects)
        return applied.job

    def fail(self, job_id: str, code: str, message: str, retryable: bool = False, *,
             attempt: int | None = None, metrics: dict[str, Any] | None = None) -> str | None:
        """End the job with ``error = {code, message, retryable}``. A ``retryable`` error with
        attempts left puts the job back in the queue instead (→ ``"queued"``). Returns the new
        status, or None when nothing applied."""
        return self._run(self._fail, job_id, code, message, retryable, attempt, metrics)  # type: ignore[no-any-return]

    def _fail(self, session: Any, effects: tx.Effects, now: datetime, job_id: str, code: str,
              message: str, retryable: bool, attempt: int | None,
              metrics: dict[str, Any] | None) -> str | None:
        if retryable:
            seen = session.execute(sa.select(Job.status, Job.attempts).where(Job.id == job_id)).first()
            if (seen is not None and seen.status == JobStatus.RUNNING.value
                    and seen.attempts < self.settings.max_attempts):
                applied = tx.apply(session, job_id, REQUEUE, {"started_at": None, "partial_text": None,
                                                                "worker_id": None, "dispatched_at": now},
                                   expected_attempt=attempt)
                if applied is not None:
                    log.info("job %s requeued after a retryable error %s: %s", job_id, code, message)
                    tx.after(session, applied, now, effects)
                    return JobStatus.QUEUED.value
                return None
        ok = self._fail_in(session, effects, now, job_id, code, message, FAIL, retryable=retryable,
                           attempt=attempt, metrics=metrics)
        return JobStatus.FAILED.value if ok else None

    def _fail_in(self, session: Any, effects: tx.Effects, now: datetime, job_id: str, code: str,
                 message: str, t: Any, *, retryable: bool = False, attempt: int | None = None,
                 metrics: dict[str, Any] | None = None) -> bool:
        applied = tx.apply(session, job_id, t, lambda seen: {
            "error": {"code": code, "message": message, "retryable": retryable},
            "finished_at": now, "partial_text": None,
            "metrics": timing(seen, now) | (metrics or {}),
        }, expected_attempt=attempt)
        if applied is None:
            return False
        tx.after(session, applied, now, effects)
        return True

    def mark_canceled(self, job_id: str, *, attempt: int | None = None) -> bool:
        """The worker stopped a job whose cancel was requested: → canceled. False if no-op."""
        return self._run(self._mark_canceled, job_id, attempt)  # type: ignore[no-any-return]

    def _mark_canceled(self, session: Any, effects: tx.Effects, now: datetime, job_id: str,
                       attempt: int | None) -> bool:
        # Only a job this worker still runs and whose cancel the client asked for: a job the
        # sweeper requeued under a slow worker must not be canceled by that worker.
        applied = tx.apply(session, job_id, CANCEL, lambda seen: {
            "finished_at": now, "partial_text": None, "metrics": timing(seen, now),
        }, expected_attempt=attempt,
            extra_where=(Job.status == JobStatus.RUNNING.value, Job.cancel_requested.is_(True)))
        if applied is None:
            return False
        tx.after(session, applied, now, effects)
        return True

    def requeue(self, job_id: str, *, attempt: int | None = None) -> bool:
        """running → queued with a fresh gpu message (the sweeper's recovery of a lost job)."""
        return self._run(self._requeue, job_id, attempt)  # type: ignore[no-any-return]

    def _requeue(self, session: Any, effects: tx.Effects, now: datetime, job_id: str,
                 attempt: int | None) -> bool:
        applied = tx.apply(session, job_id, REQUEUE, {"started_at": None, "partial_text": None,
                                                                "worker_id": None, "dispatched_at": now},
                           expected_attempt=attempt)
        if applied is None:
            return False
        tx.after(session, applied, now, effects)
        return True

    def expire(self, job_id: str) -> bool:
        """queued past its TTL → failed with ``expired``."""
        return self._run(self._fail_in, job_id, "expired",  # type: ignore[no-any-return]
                         "the job was not started before its ttl_seconds passed", EXPIRE)


def timing(seen: Any, now: datetime) -> dict[str, Any]:
    """``queued_seconds`` and ``run_seconds`` from the row as seen before the transition."""
    out: dict[str, Any] = {}
    if seen.started_at is not None:
        out["queued_seconds"] = round((seen.started_at - seen.created_at).total_seconds(), 3)
        out["run_seconds"] = round((now - seen.started_at).total_seconds(), 3)
    else:
        out["queued_seconds"] = round((now - seen.created_at).total_seconds(), 3)
        out["run_seconds"] = 0.0
    return out
