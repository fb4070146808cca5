"""Webhook messages: written with the state change that causes them, delivered by the worker.

A message row (``webhook_messages``) holds the event type, the URL and the payload (the Job or
Batch JSON as the API renders it at that moment), ``status`` pending/delivered/failed,
``attempts`` and ``next_attempt_at`` (due now when written); each try is a ``webhook_attempts``
row. Delivery (signing, sending, retries, recording attempts) is ``worker.webhooks``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from core.db import utcnow
from jobs import ids
from jobs.queue import Message
from jobs.render import rfc3339
from jobs.tables import WebhookAttempt, WebhookMessage

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def new_message(
    session: Session, *, tenant_id: str, type: str, url: str, payload: dict[str, Any],
    job_id: str | None = None, batch_id: str | None = None, now: datetime | None = None,
) -> Message:
    """Insert a pending message; returns the outbox message that will trigger its delivery."""
    from jobs.outbox import webhook_message

    now = now or utcnow()
    msg_id = ids.message_id()
    session.add(WebhookMessage(
        id=msg_id, tenant_id=tenant_id, job_id=job_id, batch_id=batch_id, type=type, url=url,
        payload=payload, status=PENDING, attempts=0, next_attempt_at=now, created_at=now,
    ))
    return webhook_message(msg_id)


def message_to_dict(msg: WebhookMessage, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": msg.id, "object": "webhook_message", "type": msg.type, "url": msg.url,
        "job_id": msg.job_id, "batch_id": msg.batch_id, "status": msg.status,
        "attempt_count": msg.attempts, "next_attempt_at": rfc3339(msg.next_attempt_at),
        "created_at": rfc3339(msg.created_at), "delivered_at": rfc3339(msg.delivered_at),
        "attempts": [
            {"attempted_at": rfc3339(a.attempted_at), "status_code": a.status_code, "error": a.error,
             "duration_ms": a.duration_ms}
            for a in attempts
        ],
    }
