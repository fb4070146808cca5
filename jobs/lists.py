"""Newest-first lists with opaque keyset cursors.

Order is ``(created_at DESC, id DESC)``; ids are time-ordered, so ties inside one timestamp are
stable. A cursor is base64url of ``[created_at, id]`` of the last row shown; anything that does
not decode to that is ``invalid_cursor`` (422). Every filter is served by an index that starts
with ``tenant_id`` and ends with ``(created_at, id)``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.errors import InvalidCursor, InvalidRequest
from jobs.render import rfc3339
from jobs.states import BatchStatus, JobStatus
from jobs.tables import Batch, Job, WebhookAttempt, WebhookMessage

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([rfc3339(created_at), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, row_id = json.loads(raw)
        if not isinstance(when, str) or not isinstance(row_id, str):
            raise ValueError("bad types")
        return parse_time(when), row_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, InvalidRequest):
        raise InvalidCursor(
            "cursor is not one this API returned",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
        ) from None


def parse_time(text: str, loc: list[Any] | None = None) -> datetime:
    """RFC 3339 (``Z`` or an offset; a bare time is taken as UTC)."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"not an RFC 3339 time: {text[:50]!r}",
            errors=[{"loc": loc or [], "msg": "expected an RFC 3339 time"}],
        ) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(
            f"limit must be 1..{MAX_LIMIT}",
            errors=[{"loc": ["query", "limit"], "msg": f"must be 1..{MAX_LIMIT}"}],
        )
    return limit


def _status(enum: Any, value: str) -> str:
    try:
        return str(enum(value).value)
    except ValueError:
        allowed = ", ".join(s.value for s in enum)
        raise InvalidRequest(
            f"unknown status {value!r}",
            errors=[{"loc": ["query", "status"], "msg": f"must be one of {allowed}"}],
        ) from None


@dataclass
class Page:
    rows: list[Any]
    next_cursor: str | None


def _page(session: Session, model: Any, where: list[Any], limit: int, cursor: str | None) -> Page:
    check_limit(limit)
    if cursor:
        at, last_id = decode_cursor(cursor)
        where.append(sa.tuple_(model.created_at, model.id) < sa.tuple_(sa.literal(at, model.created_at.type),
                                                                        sa.literal(last_id)))
    rows = list(session.scalars(
        sa.select(model).where(*where).order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    ))
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return Page(rows, nxt)


@dataclass
class JobFilters:
    status: str | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    error_code: str | None = None  # failed jobs whose error has this code
    custom_id_prefix: str | None = None  # custom_id starts with this (the dashboard's search)


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def list_jobs(session: Session, tenant_id: str, f: JobFilters, limit: int = DEFAULT_LIMIT,
              cursor: str | None = None) -> Page:
    where: list[Any] = [Job.tenant_id == tenant_id]
    if f.status is not None:
        where.append(Job.status == _status(JobStatus, f.status))
    if f.batch_id is not None:
        where.append(Job.batch_id == f.batch_id)
    if f.custom_id is not None:
        where.append(Job.custom_id == f.custom_id)
    if f.created_after is not None:
        where.append(Job.created_at > f.created_after)
    if f.created_before is not None:
        where.append(Job.created_at < f.created_before)
    if f.error_code is not None:
        where.append(Job.error["code"].as_string() == f.error_code)
    if f.custom_id_prefix:
        where.append(Job.custom_id.like(_like_prefix(f.custom_id_prefix), escape="\\"))
    return _page(session, Job, where, limit, cursor)


def list_batches(session: Session, tenant_id: str, status: str | None, limit: int = DEFAULT_LIMIT,
                 cursor: str | None = None) -> Page:
    where: list[Any] = [Batch.tenant_id == tenant_id]
    if status is not None:
        where.append(Batch.status == _status(BatchStatus, status))
    return _page(session, Batch, where, limit, cursor)


def list_webhook_messages(session: Session, tenant_id: str, *, job_id: str | None, batch_id: str | None,
                          limit: int = DEFAULT_LIMIT, cursor: str | None = None
                          ) -> tuple[Page, dict[str, list[WebhookAttempt]]]:
    where: list[Any] = [WebhookMessage.tenant_id == tenant_id]
    if job_id is not None:
        where.append(WebhookMessage.job_id == job_id)
    if batch_id is not None:
        where.append(WebhookMessage.batch_id == batch_id)
    page = _page(session, WebhookMessage, where, limit, cursor)
    attempts: dict[str, list[WebhookAttempt]] = {m.id: [] for m in page.rows}
    if attempts:
        for a in session.scalars(
            sa.select(WebhookAttempt).where(WebhookAttempt.message_id.in_(list(attempts)))
            .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
        ):
            attempts[a.message_id].append(a)
    return page, attempts
