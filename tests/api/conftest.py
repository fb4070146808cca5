"""Fixtures: one migrated PostgreSQL database, Redis as the broker, the S3 server; a real uvicorn
server per module; two tenants."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings
from tests.api import helpers


@pytest.fixture(scope="session")
def s3_env(s3_bucket) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """boto3 reads credentials from the environment (the API runs in this process)."""
    old = {k: os.environ.get(k) for k in s3_bucket.env()}
    os.environ.update(s3_bucket.env())
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def api_settings(pg_database, redis_url, s3_bucket, s3_env, tmp_path_factory) -> Settings:  # type: ignore[no-untyped-def]
    data = Path(tmp_path_factory.mktemp("captionq-api"))
    settings = Settings(
        database_url=pg_database.url, broker_url=redis_url, data_dir=data,
        s3_endpoint_url=s3_bucket.endpoint_url, s3_region=s3_bucket.region,
        max_request_bytes=2 * 1024 * 1024, max_data_uri_bytes=64 * 1024, max_batch_jobs_inline=500,
        outbox_grace_seconds=0.0, max_context_tokens=32768,
        # No worker takes these tests' messages: a wide window sends a batch's jobs at once, as
        # the tests that drain them expect (tests/jobs/test_fair_dispatch.py covers the window).
        dispatch_window=10_000,
    )
    return helpers.migrated(settings)


@pytest.fixture(scope="session")
def server(api_settings: Settings) -> Iterator[helpers.LiveServer]:
    srv = helpers.start_server(api_settings)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def tenant_a(api_settings: Settings):  # type: ignore[no-untyped-def]
    return helpers.new_tenant(api_settings, f"tenant-a-{os.getpid()}-{id(api_settings)}")


@pytest.fixture(scope="session")
def tenant_b(api_settings: Settings):  # type: ignore[no-untyped-def]
    return helpers.new_tenant(api_settings, f"tenant-b-{os.getpid()}-{id(api_settings)}")


@pytest.fixture
def api(server, tenant_a):  # type: ignore[no-untyped-def]
    with helpers.client(server.base_url, tenant_a.api_key) as c:
        yield c


@pytest.fixture
def api_b(server, tenant_b):  # type: ignore[no-untyped-def]
    with helpers.client(server.base_url, tenant_b.api_key) as c:
        yield c


@pytest.fixture
def anon(server):  # type: ignore[no-untyped-def]
    with helpers.client(server.base_url, None) as c:
        yield c
