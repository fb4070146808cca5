"""Fixtures for the storage tests: real media bytes, a local HTTP server, S3 configs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from storage import StorageConfig
from tests.storage import media
from tests.storage.servers import RunningServer, ServerState, start_http


@pytest.fixture(scope="session")
def png() -> bytes:
    return media.image_bytes("PNG")


@pytest.fixture(scope="session")
def jpeg() -> bytes:
    return media.image_bytes("JPEG")


@pytest.fixture(scope="session")
def mp4() -> bytes:
    return media.video_bytes("mp4", "mpeg4")


@pytest.fixture(scope="module")
def http_server(png: bytes, mp4: bytes) -> Iterator[RunningServer]:
    state = ServerState()
    state.files["/img.png"] = (png, "image/png")
    state.files["/clip.mp4"] = (mp4, "video/mp4")
    state.files["/octet.png"] = (png, "application/octet-stream")
    state.files["/page.html"] = (b"<!doctype html><html><body>hi</body></html>", "text/html")
    srv = start_http(state)
    yield srv
    srv.server.shutdown()
    srv.server.server_close()


def fast(**kw: object) -> StorageConfig:
    """Short timeouts and near-zero backoff so failure paths stay quick."""
    base: dict[str, object] = {
        "retries": 2,
        "retry_backoff": 0.01,
        "retry_backoff_max": 0.05,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
    }
    base.update(kw)
    return StorageConfig(**base)  # type: ignore[arg-type]


def s3_config(bucket, **kw: object) -> StorageConfig:  # type: ignore[no-untyped-def]
    base: dict[str, object] = {
        "s3_endpoint_url": bucket.endpoint_url,
        "s3_region": bucket.region,
        "s3_access_key_id": bucket.access_key,
        "s3_secret_access_key": bucket.secret_key,
    }
    base.update(kw)
    return fast(**base)
