"""``captionq tenants set-weight`` against a real (migrated) PostgreSQL database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.db import Database
from core.settings import Settings
from jobs.tables import Tenant
from tests.api import helpers

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CAPTIONQ_DATABASE_URL": settings.database_url}
    return subprocess.run([sys.executable, "-m", "cli.main", "tenants", "set-weight", *args],
                          capture_output=True, text=True, check=False, timeout=120, cwd=ROOT, env=env)


def stored_weight(settings: Settings, tenant_id: str) -> float | None:
    db = Database(settings)
    try:
        with db.session() as s:
            return s.scalar(sa.select(Tenant.weight).where(Tenant.id == tenant_id))
    finally:
        db.dispose()


def test_set_weight_stores_it_and_mistakes_are_one_line(pg_database, tmp_path):  # type: ignore[no-untyped-def]
    settings = helpers.migrated(Settings(database_url=pg_database.url, data_dir=tmp_path))
    tenant = helpers.new_tenant(settings, "weighty").tenant_id
    ok = cli(settings, "--tenant", "weighty", "--weight", "3", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"tenant": tenant, "weight": 3.0}
    assert stored_weight(settings, tenant) == 3.0

    for args, words in ((["--tenant", "weighty", "--weight", "0"], "positive"),
                        (["--tenant", "weighty"], "--weight N or --default")):
        bad = cli(settings, *args)
        assert bad.returncode == 2 and words in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad
    assert stored_weight(settings, tenant) == 3.0

    back = cli(settings, "--tenant", tenant, "--default")
    assert back.returncode == 0 and "(default)" in back.stderr, back
    assert stored_weight(settings, tenant) is None
