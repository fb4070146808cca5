"""The job service: everything that creates or changes jobs.

One instance per process, built at the entry point from ``Database``, ``Settings`` and a
``Publisher``. Each method runs its own short transaction; outbox rows written in it are
published after the commit (a failed publish is left to the sweeper).

Worker-facing methods (the Celery worker calls these; all are safe to call twice):

- claim, progress and outcome: :class:`jobs.worker_side.WorkerTransitions` (a base class);
- :meth:`iter_batch_results` / :meth:`mark_batch_finalized` — the batch finalize task.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from core import tracing
from core.db import Database, utcnow
from core.errors import JobFinished, NotFound
from core.settings import Settings
from jobs import ids, outbox
from jobs import transitions as tx
from jobs.admission import Admission, check_quota, reserve
from jobs.queue import Publisher
from jobs.render import result_line
from jobs.states import CANCEL, JobStatus
from jobs.tables import Batch, Job
from jobs.worker_side import ClaimedJob, WorkerTransitions

if TYPE_CHECKING:
    from jobs.outbox_cleaner import OutboxCleaner

log = logging.getLogger(__name__)


class JobService(WorkerTransitions):
    def __init__(self, db: Database, settings: Settings, publisher: Publisher | None = None,
                 cleaner: OutboxCleaner | None = None) -> None:
        self.db = db
        self.settings = settings
        self.publisher = publisher
        # Long-running processes (API, worker) pass one so that deleting published outbox rows
        # does not hold up the caller; without it they are deleted before returning.
        self.cleaner = cleaner

    # --- plumbing -------------------------------------------------------------------------
    def publish(self, outbox_ids: list[int]) -> int:
        """Send outbox rows after their transaction committed (errors: left for the sweeper)."""
        if not outbox_ids:
            return 0
        return outbox.publish(self.db, self.publisher, outbox_ids, self.settings.dispatch_window)

    def _run(self, fn: Any, *args: Any, before_publish: Callable[[], object] | None = None,
             relaxed: bool = False, **kwargs: Any) -> Any:
        """Run ``fn(session, effects, now, …)`` in one transaction, then publish its outbox rows
        (already in hand: no need to read them back); ``before_publish()`` runs in between.
        ``relaxed``: commit without waiting for the WAL flush (``Database.relaxed_session``)."""
        now = utcnow()
        effects = tx.Effects()
        with (self.db.relaxed_session() if relaxed else self.db.session()) as session:
            result = fn(session, effects, now, *args, **kwargs)
            ids_ = outbox.add(session, effects.messages, now)
        if before_publish is not None:
            before_publish()
        if ids_:
            sent = [dataclasses.replace(m, outbox_id=i) for m, i in zip(effects.messages, ids_, strict=True)]
            outbox.publish_messages(self.db, self.publisher, sent, self.settings.dispatch_window,
                                    self.cleaner)
        return result

    # --- submission -----------------------------------------------------------------------
    def submit(self, tenant_id: str, request: dict[str, Any], *, job_id: str | None = None,
               before_publish: Callable[[], object] | None = None, admission: Admission | None = None) -> Job:
        """Insert one queued job (``request`` already normalised) and enqueue it;
        ``before_publish()`` runs after the commit and before its message goes to the broker
        (the API waits there for its subscription to the job's live events). ``admission``: the
        submitting key and its plan's quota and jobs-in-flight limit (:mod:`jobs.admission`)."""
        return self._run(self._submit, tenant_id, request, job_id, admission,  # type: ignore[no-any-return]
                         before_publish=before_publish)

    def _submit(self, session: Any, effects: tx.Effects, now: datetime, tenant_id: str,
                request: dict[str, Any], job_id: str | None, admission: Admission | None) -> Job:
        if admission is not None:
            check_quota(session, tenant_id, admission.limits, now)
        job = new_job_row(job_id or ids.job_id(), tenant_id, request, now,
                          api_key_id=admission.key_id if admission else None,
                          trace_context=tracing.current_carrier())
        # A Core INSERT of the row's values (the returned Job stays detached, as after a commit
        # with expire_on_commit off): the ORM's unit of work costs ~0.5 ms per submit.
        session.execute(sa.insert(Job.__table__), job_values(job))  # type: ignore[arg-type]
        effects.add(outbox.caption_message(job.id, job.priority, job.model))
        reserve(session, tenant_id, 1, admission.limits.max_jobs_in_flight if admission else None)
        return job

    # --- reads ----------------------------------------------------------------------------
    def get(self, tenant_id: str, job_id: str) -> Job:
        with self.db.session() as session:
            job = session.scalar(sa.select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    # --- cancel (API) -----------------------------------------------------------------------
    def cancel(self, tenant_id: str, job_id: str) -> Job:
        """A queued job is canceled at once; a running one gets ``cancel_requested`` and the
        worker records ``canceled`` at its next generation step. Finished: :class:`JobFinished`."""
        return self._run(self._cancel, tenant_id, job_id)  # type: ignore[no-any-return]

    def _cancel(self, session: Any, effects: tx.Effects, now: datetime, tenant_id: str, job_id: str) -> Job:
        owner = session.scalar(sa.select(Job.tenant_id).where(Job.id == job_id))
        if owner != tenant_id:
            raise NotFound(f"no job {job_id!r}")
        applied = tx.apply(session, job_id, CANCEL, {"finished_at": now, "partial_text": None},
                           extra_where=[Job.status == JobStatus.QUEUED.value])
        if applied is not None:
            tx.after(session, applied, now, effects)
            return applied.job
        res = session.execute(
            sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
            .values(cancel_requested=True)
        )
        job = session.execute(
            sa.select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
        ).scalar_one()
        if res.rowcount == 0 and JobStatus(job.status).terminal:  # type: ignore[attr-defined]
            raise JobFinished(f"job {job_id} was already {job.status}")
        return job  # type: ignore[no-any-return]

    # --- batch finalisation (worker's finalize task) -----------------------------------------
    def iter_batch_results(self, batch_id: str, chunk: int = 1000) -> Iterator[dict[str, Any]]:
        """Result lines of a batch in submission order (``{job_id, custom_id, status, output,
        error, metadata}``), streamed: read in keyset chunks, each in its own short session."""
        last = -1  # seq: 0-based index for inline batches, 1-based line number for manifests
        while True:
            with self.db.session() as session:
                rows = session.execute(
                    sa.select(Job.id, Job.seq, Job.custom_id, Job.status, Job.output, Job.error, Job.meta)
                    .where(Job.batch_id == batch_id, Job.seq > last).order_by(Job.seq).limit(chunk)
                ).all()
            if not rows:
                return
            for r in rows:
                yield result_line(r)
            last = rows[-1].seq

    def mark_batch_finalized(self, batch_id: str) -> bool:
        """Results are written: the batch becomes ``completed`` (``canceled`` if a cancel was requested), gets
        ``finished_at`` and emits ``batch.completed``. Idempotent; False when already done."""
        return self._run(lambda s, e, now: tx.finalize(s, batch_id, now, e) is not None)  # type: ignore[no-any-return]

    def batch_output_url(self, batch_id: str) -> str | None:
        with self.db.session() as session:
            return session.scalar(sa.select(Batch.output_url).where(Batch.id == batch_id))


def job_values(job: Job) -> dict[str, Any]:
    """The row's column values (column names, e.g. ``metadata`` for ``meta``)."""
    return {col.name: getattr(job, prop.key) for prop in sa.inspect(Job).column_attrs
            for col in prop.columns[:1]}


def new_job_row(job_id: str, tenant_id: str, request: dict[str, Any], now: datetime, *,
                batch_id: str | None = None, seq: int | None = None,
                webhook: dict[str, Any] | None = None, api_key_id: str | None = None,
                trace_context: dict[str, str] | None = None) -> Job:
    hook = request.get("webhook") or webhook
    return Job(
        id=job_id, tenant_id=tenant_id, batch_id=batch_id, seq=seq, custom_id=request.get("custom_id"),
        status=JobStatus.QUEUED.value, priority=request["priority"], request=request, output=None,
        partial_text=None, error=None, attempts=0, cancel_requested=False, metrics=None,
        meta=request.get("metadata") or {},
        webhook_url=hook["url"] if hook else None, webhook_events=list(hook["events"]) if hook else None,
        created_at=now, started_at=None, finished_at=None,
        expires_at=now + timedelta(seconds=request["ttl_seconds"]), model=request.get("model"),
        api_key_id=api_key_id, trace_context=trace_context,
    )


__all__ = ["ClaimedJob", "JobService", "job_values", "new_job_row"]
