"""``Idempotency-Key`` on POST /v1/jobs and /v1/batches (IETF draft semantics).

Same key + same body within ``idempotency_ttl_seconds`` (24 h) → the resource first created;
same key + another body → 422 ``idempotency_key_reused``; the first request still in flight → 409
``idempotency_in_flight``. The key is claimed in its own committed transaction before the work
starts, so a concurrent duplicate sees it. A claim left ``in_flight`` by a crashed process is taken
over after ``STALE_IN_FLIGHT``; a request that fails releases its key.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from core.db import Database, utcnow
from core.errors import IdempotencyInFlight, IdempotencyKeyReused, InvalidRequest
from jobs.tables import IdempotencyKey

MAX_KEY_LENGTH = 255
STALE_IN_FLIGHT = timedelta(minutes=15)
_KEY_RULE = f"1..{MAX_KEY_LENGTH} printable characters"
IN_FLIGHT = "the first request with this Idempotency-Key is still being processed"


def request_hash(endpoint: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{endpoint}\n{canonical}".encode()).hexdigest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable characters",
            errors=[{"loc": ["header", "Idempotency-Key"], "msg": _KEY_RULE}],
        )
    return key


def claim(db: Database, tenant_id: str, key: str, endpoint: str, body_hash: str, ttl_seconds: int,
          now: datetime | None = None) -> str | None:
    """Claim ``key`` for this request. Returns None when the caller should do the work (then call
    :func:`complete` or :func:`release`), or the id of the resource the first request created."""
    check_key(key)
    for _ in range(3):
        now = now or utcnow()
        with db.session() as session:
            row = session.get(IdempotencyKey, (tenant_id, key), with_for_update=db.dialect == "postgresql")
            if row is not None and (
                row.created_at < now - timedelta(seconds=ttl_seconds)
                or (row.status == "in_flight" and row.created_at < now - STALE_IN_FLIGHT)
            ):
                session.delete(row)
                session.flush()
                row = None
            if row is None:
                session.add(IdempotencyKey(tenant_id=tenant_id, key=key, endpoint=endpoint,
                                           request_hash=body_hash, status="in_flight", created_at=now))
                try:
                    session.commit()
                except sa.exc.IntegrityError:
                    session.rollback()
                    continue  # someone claimed it at the same moment: look again
                return None
            if row.endpoint != endpoint or row.request_hash != body_hash:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different request body",
                    errors=[{"loc": ["header", "Idempotency-Key"], "msg": "reused with a different body"}],
                )
            if row.status == "in_flight":
                raise IdempotencyInFlight(IN_FLIGHT)
            return row.resource_id
    raise IdempotencyInFlight(IN_FLIGHT)


def complete(db: Database, tenant_id: str, key: str, resource_id: str) -> None:
    with db.session() as session:
        session.execute(
            sa.update(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
            .values(status="done", resource_id=resource_id)
        )


def release(db: Database, tenant_id: str, key: str) -> None:
    with db.session() as session:
        session.execute(sa.delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
            IdempotencyKey.status == "in_flight"))
