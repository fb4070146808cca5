"""``captionq.deliver_webhook(message_id)`` on the ``io`` queue: thin, all logic in ``delivery``.

``worker.tasks.register`` calls :func:`register` on the worker's app, so every worker that
consumes the ``io`` queue delivers webhooks. No Celery retry here: the message row carries its
own schedule (``delivery`` re-publishes short waits with a countdown, the sweeper wakes up the
rest), and a database error simply fails the task — the message stays due and is woken again.
"""

from __future__ import annotations

from celery import Celery, Task

from jobs.queue import QUEUE_IO, TASK_WEBHOOK
from worker import runtime
from worker.webhooks import delivery


def register(app: Celery) -> dict[str, Task]:
    @app.task(name=TASK_WEBHOOK, queue=QUEUE_IO, acks_late=True, ignore_result=True)
    def deliver_webhook(message_id: str) -> str:
        return delivery.run(runtime.current(), message_id)

    return {TASK_WEBHOOK: deliver_webhook}
