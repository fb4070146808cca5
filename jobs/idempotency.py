"""``Idempotency-Key`` on POST /v1/jobs and /v1/batches (IETF draft semantics).

Same key + same body within ``idempotency_ttl_seconds`` (24 h) → the resource first created;
same key + another body → 422 ``idempotency_key_reused``; the first request still in flight → 409
``idempotency_in_flight``. The key is claimed in its own committed transaction before the work
starts, so a concurrent duplicate sees it. A request that fails releases its key.

An ``in_flight`` claim is a lease: it holds until ``lease_until`` (``LEASE`` after the claim), and
a thread of the process that claimed it renews it every ``RENEW_EVERY`` until the request
completes or releases it. A claim left by a crashed process is therefore taken over within
``LEASE`` (rows written before leases existed: after ``STALE_IN_FLIGHT``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from core.db import Database, utcnow
from core.errors import IdempotencyInFlight, IdempotencyKeyReused, InvalidRequest
from jobs.tables import IdempotencyKey

MAX_KEY_LENGTH = 255
STALE_IN_FLIGHT = timedelta(minutes=15)
LEASE = timedelta(seconds=30)
RENEW_EVERY = 10.0  # seconds; three renewals fit in one lease

log = logging.getLogger(__name__)
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
                or (row.status == "in_flight"
                    and (row.lease_until or row.created_at + STALE_IN_FLIGHT) < now)
            ):
                session.delete(row)
                session.flush()
                row = None
            if row is None:
                session.add(IdempotencyKey(tenant_id=tenant_id, key=key, endpoint=endpoint,
                                           request_hash=body_hash, status="in_flight", created_at=now,
                                           lease_until=now + LEASE))
                try:
                    session.commit()
                except sa.exc.IntegrityError:
                    session.rollback()
                    continue  # someone claimed it at the same moment: look again
                _renewer.hold(db, tenant_id, key)
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
    _renewer.drop(db, tenant_id, key)
    with db.session() as session:
        session.execute(
            sa.update(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
            .values(status="done", resource_id=resource_id)
        )


def release(db: Database, tenant_id: str, key: str) -> None:
    _renewer.drop(db, tenant_id, key)
    with db.session() as session:
        session.execute(sa.delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
            IdempotencyKey.status == "in_flight"))


class _Renewer:
    """Renews the leases of the claims this process holds, from one daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[int, str, str], Database] = {}
        self._thread: threading.Thread | None = None

    def hold(self, db: Database, tenant_id: str, key: str) -> None:
        with self._lock:
            self._held[(id(db), tenant_id, key)] = db
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="captionq-idempotency-leases",
                                                daemon=True)
                self._thread.start()

    def drop(self, db: Database, tenant_id: str, key: str) -> None:
        with self._lock:
            self._held.pop((id(db), tenant_id, key), None)

    def held(self) -> list[tuple[Database, str, str]]:
        with self._lock:
            return [(db, t, k) for (_, t, k), db in self._held.items()]

    def renew(self, now: datetime | None = None) -> int:
        """Push every held lease to ``now + LEASE``; returns how many rows were renewed."""
        now = now or utcnow()
        renewed = 0
        for db, tenant_id, key in self.held():
            try:
                with db.session() as session:
                    res = session.execute(sa.update(IdempotencyKey).where(
                        IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
                        IdempotencyKey.status == "in_flight").values(lease_until=now + LEASE))
                    renewed += res.rowcount or 0  # type: ignore[attr-defined]
            except Exception as exc:  # the database is down: the request itself will fail too
                log.warning("renewing an Idempotency-Key lease failed: %s", type(exc).__name__)
        return renewed

    def _loop(self) -> None:
        while True:
            time.sleep(RENEW_EVERY)
            self.renew()


_renewer = _Renewer()
