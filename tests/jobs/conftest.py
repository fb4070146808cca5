"""Fixtures for the domain tests: a migrated PostgreSQL database, Redis as the broker, a
JobService as the worker builds it, and a tenant."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.urlcheck import StorageUrlChecker
from core.settings import Settings
from jobs.requests import RequestLimits, normalize_job_request
from tests.api import helpers


@pytest.fixture(scope="session")
def jobs_settings(pg_database, redis_url, tmp_path_factory) -> Settings:  # type: ignore[no-untyped-def]
    settings = Settings(database_url=pg_database.url, broker_url=redis_url,
                        data_dir=Path(tmp_path_factory.mktemp("captionq-jobs")), outbox_grace_seconds=0.0,
                        max_attempts=3,
                        # The session's tests share one database and leave queued jobs behind: a
                        # wide window keeps them from holding back the batches of tests that are
                        # not about the window (those set their own).
                        dispatch_window=10_000)
    return helpers.migrated(settings)


@pytest.fixture
def quiet(jobs_settings: Settings) -> None:
    """The sweeper acts on the whole database, which the session's tests share: earlier tests'
    unfinished jobs (their messages long drained) and outbox rows are settled first, so a test
    that counts what a sweep did, or the messages it sent, sees only its own jobs."""
    import sqlalchemy as sa

    from jobs.tables import Job, Outbox

    s = helpers.service(jobs_settings)
    try:
        with s.db.session() as session:
            session.execute(sa.update(Job).where(Job.status.in_(["queued", "running"]))
                            .values(status="canceled"))
            session.execute(sa.delete(Outbox))
    finally:
        s.db.dispose()
    helpers.drain(jobs_settings)


@pytest.fixture
def svc(jobs_settings: Settings) -> Iterator[Any]:
    s = helpers.service(jobs_settings)
    yield s
    s.db.dispose()


@pytest.fixture(scope="session")
def tenant(jobs_settings: Settings) -> str:
    import uuid

    return helpers.new_tenant(jobs_settings, f"jobs-{uuid.uuid4().hex[:8]}").tenant_id


@pytest.fixture(scope="session")
def make_request(jobs_settings: Settings):  # type: ignore[no-untyped-def]
    checker = StorageUrlChecker(jobs_settings)
    limits = RequestLimits()

    def make(**kw: Any) -> dict[str, Any]:
        raw = {"media": [{"type": "image", "url": "s3://bucket-a/x.jpg"}], **kw}
        return normalize_job_request(raw, checker, limits)

    return make
