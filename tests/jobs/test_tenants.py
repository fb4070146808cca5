"""Tenants, API keys (only a hash stored), webhook secrets and their rotation."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.db import Database, utcnow
from jobs.tables import ApiKey
from jobs.tenants import (
    TenantExists,
    add_api_key,
    authenticate,
    create_api_key,
    revoke_api_key,
    rotate_webhook_secret,
    signing_secrets,
)

pytestmark = pytest.mark.services


@pytest.fixture
def db(jobs_settings):  # type: ignore[no-untyped-def]
    d = Database(jobs_settings)
    yield d
    d.dispose()


def test_create_authenticate_revoke(db):
    name = f"t-{uuid.uuid4().hex[:8]}"
    with db.session() as s:
        created = create_api_key(s, name)
    assert created.tenant_id.startswith("ten_") and created.api_key.startswith("cq_key_")
    assert created.webhook_secret.startswith("whsec_")
    assert len(base64.b64decode(created.webhook_secret[6:])) == 32
    with db.session() as s:
        hashes = list(s.scalars(sa.select(ApiKey.key_hash).where(ApiKey.tenant_id == created.tenant_id)))
        assert len(hashes) == 1 and created.api_key not in hashes[0] and len(hashes[0]) == 64
        assert authenticate(s, created.api_key) == created.tenant_id
        assert authenticate(s, created.api_key + "x") is None
        assert authenticate(s, "cq_key_nope_nope") is None and authenticate(s, "garbage") is None
        second = add_api_key(s, name)
    with db.session() as s:
        assert authenticate(s, second) == created.tenant_id
        key_id = "key_" + created.api_key.split("_")[2]
        assert revoke_api_key(s, key_id)
    with db.session() as s:
        assert authenticate(s, created.api_key) is None and authenticate(s, second) == created.tenant_id
    with db.session() as s, pytest.raises(TenantExists):
        create_api_key(s, name)


def test_rotation_signs_with_both_secrets_during_the_grace(db):
    with db.session() as s:
        created = create_api_key(s, f"rot-{uuid.uuid4().hex[:8]}")
    with db.session() as s:
        new = rotate_webhook_secret(s, created.tenant_id, 3600)
    with db.session() as s:
        assert new != created.webhook_secret
        assert signing_secrets(s, created.tenant_id) == [new, created.webhook_secret]
        later = utcnow() + timedelta(hours=2)
        assert signing_secrets(s, created.tenant_id, later) == [new]
        newest = rotate_webhook_secret(s, created.tenant_id, 0)
    with db.session() as s:
        assert signing_secrets(s, created.tenant_id) == [newest]
