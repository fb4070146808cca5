"""Tenants, API keys and webhook signing secrets.

An API key reads ``cq_<key id>_<secret>``. Only sha256(secret) is stored; the key id finds the
row and the hash is compared in constant time. Each tenant has a webhook signing secret
``whsec_`` + base64(32 random bytes) (the Standard Webhooks format); a rotation keeps the previous
secret signing too until it expires, so receivers can switch without dropping messages.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.db import utcnow
from core.errors import Conflict, NotFound
from jobs import ids
from jobs.api_keys import KEY_PREFIX, hash_secret, split_key
from jobs.tables import ALL_SCOPES, ApiKey, Tenant

LOCAL_TENANT_ID = "ten_local"
LOCAL_TENANT_NAME = "__local__"  # not a name `keys create` would take by accident


class TenantExists(Conflict):
    code = "tenant_exists"
    title = "A tenant with this name already exists"


@dataclass(frozen=True)
class CreatedKey:
    tenant_id: str
    api_key: str
    webhook_secret: str


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _new_key() -> tuple[str, str, str]:
    """(key id, full key, hash of its secret part)."""
    key_id = "key_" + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}", hash_secret(secret)


def create_api_key(session: Session, name: str) -> CreatedKey:
    """Create tenant ``name`` with one API key. Raises :class:`TenantExists` (409) for a name in use.

    The key and the webhook secret are returned once; the caller commits the session.
    """
    name = name.strip()
    if not name:
        raise ValueError("tenant name must not be empty")
    if session.scalar(sa.select(Tenant.id).where(Tenant.name == name)) is not None:
        raise TenantExists(f"tenant {name!r} already exists")
    tenant = Tenant(id=ids.tenant_id(), name=name, webhook_secret=new_webhook_secret(), created_at=utcnow())
    session.add(tenant)
    session.flush()
    key_id, key, key_hash = _new_key()
    session.add(ApiKey(id=key_id, tenant_id=tenant.id, key_hash=key_hash, scopes=ALL_SCOPES,
                       created_at=utcnow()))
    session.flush()
    return CreatedKey(tenant_id=tenant.id, api_key=key, webhook_secret=tenant.webhook_secret)


def add_api_key(session: Session, tenant_id_or_name: str, scopes: str = ALL_SCOPES,
                name: str | None = None) -> str:
    """Another key for an existing tenant (returned once)."""
    return new_key_for(session, tenant_id_or_name, scopes, name)[1].api_key


def new_key_for(session: Session, tenant_id_or_name: str, scopes: str, name: str | None = None,
                ) -> tuple[ApiKey, CreatedKey]:
    """A new key with ``scopes`` (the stored, space-separated form) for an existing tenant: the
    row and the key itself (shown once; the caller commits)."""
    tenant = find_tenant(session, tenant_id_or_name)
    key_id, key, key_hash = _new_key()
    row = ApiKey(id=key_id, tenant_id=tenant.id, key_hash=key_hash, scopes=scopes, name=name,
                 created_at=utcnow())
    session.add(row)
    session.flush()
    return row, CreatedKey(tenant_id=tenant.id, api_key=key, webhook_secret="")


def authenticate(session: Session, api_key: str) -> str | None:
    """The tenant id that ``api_key`` belongs to, or None (unknown, malformed or revoked)."""
    parts = split_key(api_key)
    if parts is None:
        return None
    row = session.execute(
        sa.select(ApiKey.tenant_id, ApiKey.key_hash).where(ApiKey.id == parts[0], ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return row.tenant_id if hmac.compare_digest(row.key_hash, hash_secret(parts[1])) else None


def revoke_api_key(session: Session, key_id: str) -> bool:
    res = session.execute(
        sa.update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


def find_tenant(session: Session, tenant_id_or_name: str) -> Tenant:
    tenant = session.scalar(
        sa.select(Tenant).where(sa.or_(Tenant.id == tenant_id_or_name, Tenant.name == tenant_id_or_name))
    )
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id_or_name!r}")
    return tenant


def rotate_webhook_secret(session: Session, tenant_id_or_name: str, grace_seconds: int) -> str:
    """Issue a new signing secret; the old one keeps signing for ``grace_seconds`` more."""
    tenant = find_tenant(session, tenant_id_or_name)
    old = tenant.webhook_secret
    tenant.webhook_secret = new_webhook_secret()
    if grace_seconds > 0:
        tenant.previous_webhook_secret = old
        tenant.previous_secret_expires_at = utcnow() + timedelta(seconds=grace_seconds)
    else:
        tenant.previous_webhook_secret = None
        tenant.previous_secret_expires_at = None
    session.flush()
    return tenant.webhook_secret


def signing_secrets(session: Session, tenant_id: str, now: datetime | None = None) -> list[str]:
    """Secrets to sign a webhook with right now: the current one, then the previous one while its
    grace period lasts (each gives one ``v1,`` signature in ``webhook-signature``)."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id!r}")
    out = [tenant.webhook_secret]
    now = now or utcnow()
    if (tenant.previous_webhook_secret and tenant.previous_secret_expires_at
            and tenant.previous_secret_expires_at > now):
        out.append(tenant.previous_webhook_secret)
    return out


def ensure_local_tenant(session: Session) -> str:
    """The built-in tenant used when ``CAPTIONQ_AUTH=disabled`` (local mode only)."""
    if session.get(Tenant, LOCAL_TENANT_ID) is None:
        session.add(Tenant(id=LOCAL_TENANT_ID, name=LOCAL_TENANT_NAME, webhook_secret=new_webhook_secret(),
                           created_at=utcnow()))
        try:
            session.flush()
        except sa.exc.IntegrityError:  # created concurrently, or a tenant named "local" exists
            session.rollback()
    return LOCAL_TENANT_ID
