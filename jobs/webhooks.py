"""Webhook messages: written with the state change that causes them, delivered by the worker.

A message row (``webhook_messages``) holds the event type, the URL and the payload (the Job or
Batch JSON as the API renders it at that moment); each try is a ``webhook_attempts`` row. The
delivery side (``worker``) uses :func:`load_for_delivery` and :func:`record_attempt`.

Envelope sent (API.md): ``{"type", "timestamp": <message created_at>, "data": payload}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.db import Database, utcnow
from jobs import ids
from jobs.queue import Message
from jobs.render import rfc3339
from jobs.tables import WebhookAttempt, WebhookMessage
from jobs.tenants import signing_secrets

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


@dataclass(frozen=True)
class Delivery:
    """Everything needed to send one message once."""

    message_id: str
    tenant_id: str
    type: str
    url: str
    body: bytes  # the JSON envelope, exactly the bytes to sign and send
    secrets: list[str]  # ``whsec_…`` secrets to sign with (current first; previous during rotation)
    attempts: int  # tries so far
    status: str


def envelope(msg: WebhookMessage) -> dict[str, Any]:
    return {"type": msg.type, "timestamp": rfc3339(msg.created_at), "data": msg.payload}


def load_for_delivery(db: Database, message_id: str, now: datetime | None = None) -> Delivery | None:
    """The message ready to sign and send, or None if it does not exist."""
    with db.session() as session:
        msg = session.get(WebhookMessage, message_id)
        if msg is None:
            return None
        body = json.dumps(envelope(msg), separators=(",", ":"), ensure_ascii=False).encode()
        return Delivery(
            message_id=msg.id, tenant_id=msg.tenant_id, type=msg.type, url=msg.url, body=body,
            secrets=signing_secrets(session, msg.tenant_id, now), attempts=msg.attempts, status=msg.status,
        )


def record_attempt(
    db: Database, message_id: str, *, status_code: int | None, error: str | None, duration_ms: float,
    delivered: bool, next_attempt_at: datetime | None, now: datetime | None = None,
) -> None:
    """Record one try. ``delivered`` → status delivered; else ``next_attempt_at`` None → failed
    (given up), a time → still pending, retried then."""
    now = now or utcnow()
    status = DELIVERED if delivered else (PENDING if next_attempt_at is not None else FAILED)
    with db.session() as session:
        session.add(WebhookAttempt(message_id=message_id, attempted_at=now, status_code=status_code,
                                   error=error, duration_ms=duration_ms))
        session.execute(
            sa.update(WebhookMessage).where(WebhookMessage.id == message_id).values(
                attempts=WebhookMessage.attempts + 1, status=status,
                next_attempt_at=None if delivered else next_attempt_at,
                delivered_at=now if delivered else None, last_error=error,
            )
        )


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
