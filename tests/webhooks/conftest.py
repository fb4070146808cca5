"""Fixtures for webhook tests that touch the real PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from core.db import Database
from core.settings import Settings

SCHEDULE = "0.2,0.5,1"


@dataclass(frozen=True)
class TenantInfo:
    id: str
    api_key: str
    secret: str


@pytest.fixture(scope="session")
def migrated_url(pg_database: Any) -> str:
    from core.migrate import upgrade

    upgrade(Settings(database_url=pg_database.url))
    return str(pg_database.url)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url, "allow_private_urls": True,
        "webhook_retry_schedule": SCHEDULE, "webhook_timeout_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(migrated_url: str) -> Settings:
    return make_settings(migrated_url)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings)
    yield database
    database.dispose()


def create_tenant(db: Database) -> TenantInfo:
    from jobs.tenants import create_api_key

    with db.session() as session:
        created = create_api_key(session, f"wh-{uuid.uuid4().hex[:10]}")
    return TenantInfo(created.tenant_id, created.api_key, created.webhook_secret)


@pytest.fixture
def tenant(db: Database) -> TenantInfo:
    return create_tenant(db)


def add_message(
    db: Database, tenant_id: str, url: str, *, type: str = "job.succeeded", job_id: str | None = None,
    batch_id: str | None = None, payload: dict[str, Any] | None = None,
) -> str:
    """A pending message written by the jobs domain's own function, as a state change would."""
    from jobs.webhooks import new_message

    job_id = job_id or ("job_" + uuid.uuid4().hex[:26] if batch_id is None else None)
    payload = payload or {"id": job_id or batch_id, "object": "job" if job_id else "batch",
                          "status": "succeeded"}
    with db.session() as session:
        m = new_message(session, tenant_id=tenant_id, type=type, url=url, payload=payload,
                        job_id=job_id, batch_id=batch_id)
    return str(m.task_id)
