"""API keys: scopes, verification, listing, revocation and last use.

A key reads ``cq_<key id>_<secret>`` (:mod:`jobs.tenants` makes them). Scopes:

- ``submit``: the POST routes (submit, cancel, upload);
- ``read``: the GET routes (jobs, batches, results, events, usage of the tenant);
- ``admin``: managing the tenant's keys (``/v1/keys``) and anything else marked admin.

The first key of a tenant (``keys create --name``) has all three; keys made later get the
scopes asked for (``submit read`` by default). ``last_used_at`` is written at most once a minute
per key and API process (api/auth.py), so a busy key costs no write per request.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.db import utcnow
from core.errors import InvalidRequest, NotFound
from core.settings import Settings
from jobs.plans import Limits, limits_of
from jobs.render import rfc3339
from jobs.tables import ALL_SCOPES, ApiKey, Plan, Tenant

SCOPES = tuple(ALL_SCOPES.split())
DEFAULT_NEW_KEY_SCOPES = ("submit", "read")
KEY_PREFIX = "cq"
LAST_USED_EVERY = timedelta(seconds=60)


@dataclass(frozen=True)
class KeyInfo:
    """A verified key: whose it is, what it may do and the tenant's limits."""

    tenant_id: str
    key_id: str | None  # None: local mode without keys
    scopes: frozenset[str]
    limits: Limits


def parse_scopes(value: str | list[str] | tuple[str, ...] | None,
                 default: tuple[str, ...] = DEFAULT_NEW_KEY_SCOPES) -> str:
    """Scopes given as ``"submit,read"``, ``"submit read"`` or a list → the stored form; 422
    ``invalid_scope`` for an unknown one."""
    if value is None:
        items: list[str] = list(default)
    elif isinstance(value, str):
        items = [s for s in value.replace(",", " ").split() if s]
    else:
        items = [str(s).strip() for s in value]
    bad = [s for s in items if s not in SCOPES]
    if bad or not items:
        msg = f"unknown scope {bad[0]!r}" if bad else "give at least one scope"
        raise InvalidRequest(f"{msg}; scopes are {', '.join(SCOPES)}",
                             errors=[{"loc": ["scopes"], "msg": msg, "code": "invalid_scope"}])
    return " ".join(s for s in SCOPES if s in items)  # canonical order, no duplicates


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def split_key(api_key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    prefix, _, rest = api_key.partition("_")
    if prefix != KEY_PREFIX or not rest.startswith("key_") or len(api_key) > 200:
        return None
    key_id, sep, secret = rest[4:].partition("_")
    if not sep or not key_id or not secret:
        return None
    return "key_" + key_id, secret


def verify_key(session: Session, api_key: str, settings: Settings) -> KeyInfo | None:
    """The key's tenant, scopes and limits; None when unknown, malformed or revoked."""
    parts = split_key(api_key)
    if parts is None:
        return None
    key_id, secret = parts
    row = session.execute(
        sa.select(ApiKey.tenant_id, ApiKey.key_hash, ApiKey.scopes, Plan)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .outerjoin(Plan, Plan.name == Tenant.plan)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    ).first()
    if row is None or not hmac.compare_digest(row.key_hash, hash_secret(secret)):
        return None
    return KeyInfo(tenant_id=row.tenant_id, key_id=key_id, scopes=frozenset(row.scopes.split()),
                   limits=limits_of(row.Plan, settings))


def touch_last_used(session: Session, key_id: str, now: datetime | None = None) -> None:
    """Record a use; a no-op UPDATE when another process wrote it less than a minute ago."""
    now = now or utcnow()
    session.execute(
        sa.update(ApiKey)
        .where(ApiKey.id == key_id, sa.or_(ApiKey.last_used_at.is_(None),
                                           ApiKey.last_used_at < now - LAST_USED_EVERY))
        .values(last_used_at=now)
    )


def list_keys(session: Session, tenant_id: str, *, include_revoked: bool = True) -> list[ApiKey]:
    q = sa.select(ApiKey).where(ApiKey.tenant_id == tenant_id)
    if not include_revoked:
        q = q.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(q.order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, key_id: str, tenant_id: str | None = None) -> ApiKey:
    """Revoke ``key_id`` (of ``tenant_id`` when given: another tenant's key is 404). Revoking a
    revoked key changes nothing and returns it as it is."""
    where = [ApiKey.id == key_id]
    if tenant_id is not None:
        where.append(ApiKey.tenant_id == tenant_id)
    session.execute(sa.update(ApiKey).where(*where, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow()))
    key = session.scalar(sa.select(ApiKey).where(*where).execution_options(populate_existing=True))
    if key is None:
        raise NotFound(f"no API key {key_id!r}")
    return key


def key_to_dict(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id, "object": "api_key", "tenant": key.tenant_id, "name": key.name,
        "scopes": key.scopes.split(), "created_at": rfc3339(key.created_at),
        "last_used_at": rfc3339(key.last_used_at), "revoked_at": rfc3339(key.revoked_at),
    }
