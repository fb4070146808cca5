"""The Celery tasks: thin. Each has an explicit name, queue and retry policy, and makes one call
into :mod:`worker.pipeline`, :mod:`worker.finalize` or the sweeper. Messages carry ids only; the
database row is the state.

All tasks are late-acknowledged (``make_celery``): a message is acked only after its task
returned, so a worker that dies mid-job leaves it to be delivered again (or recovered by the
sweeper); every step is a conditional transition, so a second delivery changes nothing twice.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from core import logcontext
from jobs.queue import QUEUE_GPU, QUEUE_IO, TASK_CAPTION, TASK_EXPORT, TASK_FINALIZE, TASK_SWEEP
from worker import finalize, pipeline, runtime
from worker.record import job_error, retry_countdown

log = logging.getLogger(__name__)


def _redelivered(task: Task) -> bool:
    """A message the broker gave back after its worker died (kombu marks it), or our own retry
    of a transient failure: either way the job may still be ``running`` from the earlier try."""
    info = task.request.delivery_info or {}
    return bool(info.get("redelivered")) or bool(task.request.retries)


def register(app: Celery) -> dict[str, Task]:
    """Define the tasks on ``app`` (one made by ``jobs.queue.make_celery``)."""

    @app.task(name=TASK_CAPTION, bind=True, queue=QUEUE_GPU, acks_late=True, reject_on_worker_lost=True,
              ignore_result=True)
    def caption_job(self: Task, job_id: str) -> str:
        rt = runtime.current()
        try:
            return pipeline.run_caption_job(rt, job_id, redelivered=_redelivered(self),
                                             retries=self.request.retries)
        except pipeline.RetryLater as later:
            raise self.retry(countdown=later.countdown, max_retries=rt.settings.max_attempts,
                             exc=later) from None

    @app.task(name=TASK_FINALIZE, bind=True, queue=QUEUE_IO, acks_late=True, ignore_result=True)
    def finalize_batch(self: Task, batch_id: str) -> str:
        rt = runtime.current()
        try:
            with logcontext.bind(batch_id=batch_id):
                return finalize.finalize_batch(rt, batch_id)
        except Exception as exc:
            err = job_error(exc)
            if not err.retryable:
                raise  # logged by Celery; the sweeper re-sends finalize for unfinalized batches
            raise self.retry(countdown=retry_countdown(self.request.retries), max_retries=8,
                             exc=exc) from None

    @app.task(name=TASK_EXPORT, bind=True, queue=QUEUE_IO, acks_late=True, ignore_result=True)
    def export_batch_parts(self: Task, batch_id: str) -> int:
        from worker.export import export_parts

        rt = runtime.current()
        try:
            return export_parts(rt.jobs.db, rt.storage, batch_id)
        except Exception as exc:
            if not job_error(exc).retryable:
                raise  # the batch's finalize writes every part that is still missing
            raise self.retry(countdown=retry_countdown(self.request.retries), max_retries=8,
                             exc=exc) from None

    @app.task(name=TASK_SWEEP, queue=QUEUE_IO, acks_late=True, ignore_result=True)
    def sweep() -> dict[str, Any]:
        from jobs.sweeper import sweep as run_sweep

        rt = runtime.current()
        report = vars(run_sweep(rt.jobs))
        report["webhooks_woken"] = _wake_webhooks(rt)
        return report

    tasks: dict[str, Task] = {TASK_CAPTION: caption_job, TASK_FINALIZE: finalize_batch,
                              TASK_EXPORT: export_batch_parts, TASK_SWEEP: sweep}
    tasks.update(_webhook_tasks(app))
    return tasks


def _wake_webhooks(rt: runtime.Runtime) -> int:
    """Re-send wake-ups for webhook messages that are overdue (lost wake-up, dead worker, long
    retry wait) — the webhook delivery module's half of the sweep."""
    try:
        from core.db import utcnow
        from jobs.outbox import webhook_message
        from worker.webhooks.delivery import republish_due
    except ImportError:
        return 0

    def publish(ids: Any) -> None:
        rt.publisher.send_many([webhook_message(i) for i in ids])

    return republish_due(rt.db, publish, now=utcnow(), grace_seconds=rt.settings.outbox_grace_seconds)


def _webhook_tasks(app: Celery) -> dict[str, Task]:
    """``captionq.deliver_webhook`` lives with the webhook code (worker/webhooks/tasks.py)."""
    try:
        from worker.webhooks import tasks as webhook_tasks
    except ImportError:
        log.warning("worker.webhooks.tasks is missing: this worker does not deliver webhooks")
        return {}
    reg = getattr(webhook_tasks, "register", None)
    return dict(reg(app) or {}) if callable(reg) else {}
