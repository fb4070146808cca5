"""The embedded local mode's store: migrations and a smoke flow on SQLite with kombu's filesystem
broker, auth disabled (the built-in local tenant) and file:// media under the media root."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from core.migrate import current, downgrade, upgrade
from core.settings import Settings
from tests.api import helpers
from tests.api.helpers import drain, problem_of


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Settings:  # type: ignore[no-untyped-def]
    root = Path(tmp_path_factory.mktemp("local"))
    (root / "media").mkdir()
    (root / "media" / "cat.png").write_bytes(helpers.png_bytes())
    settings = Settings(local_mode=True, auth="disabled", database_url=f"sqlite:///{root}/db/captionq.db",
                        data_dir=root / "data", media_root=root / "media")
    upgrade(settings)
    return settings


def test_migrations_up_down_up(local: Settings):
    assert current(local) == "0008"
    downgrade(local, "0007")  # the bulk batch columns go
    assert not {"source", "output_formats", "parts_done", "expires_at"} & _columns(local, "batches")
    assert "weight" in _columns(local, "tenants") and {"fair_queues", "fair_tenants"} <= _tables(local)
    downgrade(local, "0006")  # fair scheduling's tables and the tenants' weight go
    assert "weight" not in _columns(local, "tenants")
    assert not {"fair_queues", "fair_tenants"} & _tables(local)
    assert "trace_context" in _columns(local, "jobs")
    downgrade(local, "0005")  # the jobs' trace context goes
    assert "trace_context" not in _columns(local, "jobs")
    downgrade(local, "0004")  # plans, usage, key scopes and the in-flight counter go
    assert not {"plans", "usage_daily"} & _tables(local)
    assert not {"plan", "jobs_in_flight"} & _columns(local, "tenants")
    assert not {"scopes", "last_used_at"} & _columns(local, "api_keys")
    downgrade(local, "0003")  # the jobs' model columns go
    assert not {"model", "model_revision"} & _columns(local, "jobs")
    downgrade(local, "0002")  # the workers' stats column goes
    assert "stats" not in _columns(local, "workers")
    downgrade(local, "0001")  # the heartbeat/lease columns go, the rest stays
    assert current(local) == "0001"
    downgrade(local, "base")
    assert current(local) is None
    upgrade(local)
    engine = sa.create_engine(local.sqlalchemy_url)
    names = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {"tenants", "api_keys", "jobs", "batches", "outbox", "webhook_messages", "webhook_attempts",
            "idempotency_keys", "workers", "plans", "usage_daily", "fair_queues", "fair_tenants"} <= names
    assert "stats" in _columns(local, "workers")
    assert {"source", "output_formats", "parts_done", "expires_at"} <= _columns(local, "batches")


def _tables(settings: Settings) -> set[str]:
    engine = sa.create_engine(settings.sqlalchemy_url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _columns(settings: Settings, table: str) -> set[str]:
    engine = sa.create_engine(settings.sqlalchemy_url)
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_local_mode_smoke(local: Settings):
    srv = helpers.start_server(local)
    try:
        drain(local)
        media = local.media_root.resolve()
        with helpers.client(srv.base_url, None) as c:  # no key: auth is disabled
            r = c.post("/v1/jobs", json={"media": [{"type": "image", "url": f"file://{media}/cat.png"}],
                                         "custom_id": "cat"})
            assert r.status_code == 202, r.text
            # Without Redis the buckets live in the API process: the local tenant's, no key's.
            assert r.headers["RateLimit-Policy"] == '"tenant";q=200;w=2'
            assert r.headers["RateLimit"].startswith('"tenant";r=199;')
            job = r.json()
            r = c.post("/v1/jobs", json={"media": [{"type": "image", "url": "file:///etc/hostname"}]})
            assert r.status_code == 422 and problem_of(r)["code"] == "url_not_allowed"
            msgs = drain(local, expect=1)
            assert [m["id"] for m in msgs] == [job["id"]] and msgs[0]["task"] == "captionq.caption_job"
            assert c.get("/v1/jobs", params={"custom_id": "cat"}).json()["data"][0]["id"] == job["id"]

            svc = helpers.service(local)
            claimed = svc.start(job["id"])
            assert claimed is not None and claimed["media"][0]["url"] == f"file://{media}/cat.png"
            assert svc.start(job["id"]) is None
            assert svc.succeed(job["id"], {"text": "a cat"}, {"model": "tiny"}, attempt=claimed.attempt)
            done = c.get(f"/v1/jobs/{job['id']}", params={"wait": 5}).json()
            assert done["status"] == "succeeded" and done["output"] == {"text": "a cat"}

            b = c.post("/v1/batches", json={"jobs": [{"prompts": ["hi"], "custom_id": "1"},
                                                     {"prompts": ["yo"], "custom_id": "2"}]}).json()
            assert b["counts"]["total"] == 2
            lines = c.get(f"/v1/batches/{b['id']}/results").text.splitlines()
            assert len(lines) == 2
            r = c.post(f"/v1/batches/{b['id']}/cancel")
            assert r.status_code == 202 and r.json()["counts"]["canceled"] == 2
            assert c.get(f"/v1/batches/{b['id']}").json()["status"] == "canceled"
            usage = c.get("/v1/usage", params={"group_by": "key"}).json()
            assert usage["total"]["jobs"] == 3 and [r["key"] for r in usage["data"]] == [None]
            ready = c.get("/readyz")  # no GPU worker runs here
            assert ready.status_code == 503
            assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "none"}
            svc.db.dispose()
    finally:
        srv.stop()
