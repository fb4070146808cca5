"""Shared fixtures. Tier 1 tests (pure functions) need none of these; tier 2 tests take the
real-service fixtures below; GPU tests are marked ``gpu`` and skipped without CUDA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import services

DATA = Path(__file__).resolve().parent / "data"
KIT = DATA / "conformance"


@pytest.fixture(scope="session")
def kit_dir() -> Path:
    return KIT


@pytest.fixture(scope="session")
def tiny_internlm2() -> Path:
    return KIT / "models" / "internvl2-internlm2"


@pytest.fixture(scope="session")
def tiny_qwen2() -> Path:
    return KIT / "models" / "internvl2-qwen2"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[services.PostgresDB]:
    db = services.create_database()
    yield db
    services.drop_database(db)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    yield services.redis_url()
    services.release_redis_leases()


@pytest.fixture(scope="session")
def s3_bucket() -> services.S3Bucket:
    return services.create_bucket()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
