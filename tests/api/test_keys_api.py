"""API keys: scopes on every route, the admin API, last use, and revocation across API
processes within the auth cache's lifetime; the ``captionq keys`` commands."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from core.db import Database
from core.settings import Settings
from jobs.tables import ApiKey
from tests.api import helpers
from tests.api.helpers import problem_of

pytestmark = pytest.mark.services

TTL = 1.0  # the auth cache of these servers (the default is 30 s)


@pytest.fixture(scope="module")
def short_ttl(api_settings: Settings) -> Settings:
    return api_settings.model_copy(update={"auth_cache_seconds": TTL})


@pytest.fixture(scope="module")
def two_servers(short_ttl: Settings) -> Iterator[tuple[helpers.LiveServer, helpers.LiveServer]]:
    """Two API servers, each with its own auth cache, as two API processes have."""
    a, b = helpers.start_server(short_ttl), helpers.start_server(short_ttl)
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def owner(short_ttl: Settings):  # type: ignore[no-untyped-def]
    return helpers.new_tenant(short_ttl, f"keys-{uuid.uuid4().hex[:8]}")


def _new_key(base: str, admin_key: str, scopes: list[str], name: str = "k") -> dict:  # type: ignore[type-arg]
    with helpers.client(base, admin_key) as c:
        r = c.post("/v1/keys", json={"scopes": scopes, "name": name})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_scopes_gate_reads_writes_and_admin(two_servers, owner) -> None:  # type: ignore[no-untyped-def]
    base = two_servers[0].base_url
    read = _new_key(base, owner.api_key, ["read"], "reader")
    submit = _new_key(base, owner.api_key, ["submit"], "submitter")
    assert read["scopes"] == ["read"] and read["api_key"].startswith("cq_" + read["id"] + "_")
    with helpers.client(base, read["api_key"]) as c:
        assert c.get("/v1/jobs").status_code == 200
        p = problem_of(c.post("/v1/jobs", json={"prompts": ["hi"]}))
        assert (p["status"], p["code"]) == (403, "insufficient_scope") and "'submit'" in p["detail"]
        assert problem_of(c.get("/v1/keys"))["code"] == "insufficient_scope"
    with helpers.client(base, submit["api_key"]) as c:
        assert problem_of(c.get("/v1/jobs"))["code"] == "insufficient_scope"
        assert c.post("/v1/jobs/job_00000000000000000000000000/cancel").status_code == 404  # passed the gate
    with helpers.client(base, owner.api_key) as c:
        listed = c.get("/v1/keys").json()["data"]
        assert all("api_key" not in k for k in listed) and read["api_key"] not in json.dumps(listed)
        by_id = {k["id"]: k for k in listed}
        first = next(k for k in listed if k["id"] not in (read["id"], submit["id"]))
        assert first["scopes"] == ["submit", "read", "admin"]
        assert by_id[read["id"]]["name"] == "reader" and by_id[read["id"]]["revoked_at"] is None
        bad = problem_of(c.post("/v1/keys", json={"scopes": ["root"]}))
        assert (bad["status"], bad["code"]) == (422, "invalid_scope")


def test_last_used_is_written_at_most_once_a_minute(two_servers, owner, short_ttl) -> None:  # type: ignore[no-untyped-def]
    key = _new_key(two_servers[0].base_url, owner.api_key, ["read"])
    db = Database(short_ttl)
    try:
        def last_used() -> object:
            with db.session() as s:
                return s.scalar(sa.select(ApiKey.last_used_at).where(ApiKey.id == key["id"]))

        assert last_used() is None
        with helpers.client(two_servers[0].base_url, key["api_key"]) as c:
            assert c.get("/v1/jobs").status_code == 200
            first = last_used()
            assert first is not None
            for _ in range(3):
                assert c.get("/v1/jobs").status_code == 200
        with helpers.client(two_servers[1].base_url, key["api_key"]) as c:
            assert c.get("/v1/jobs").status_code == 200  # another process: its UPDATE matches no row
        assert last_used() == first
    finally:
        db.dispose()


def test_a_revoked_key_is_refused_by_every_process_within_the_cache_ttl(two_servers, owner) -> None:  # type: ignore[no-untyped-def]
    a, b = two_servers
    key = _new_key(a.base_url, owner.api_key, ["read"])
    with helpers.client(a.base_url, key["api_key"]) as ca, helpers.client(b.base_url, key["api_key"]) as cb:
        assert ca.get("/v1/jobs").status_code == 200 and cb.get("/v1/jobs").status_code == 200  # both cached
        with helpers.client(a.base_url, owner.api_key) as admin:
            r = admin.post(f"/v1/keys/{key['id']}/revoke")
        revoked_at = time.monotonic()
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
        assert problem_of(ca.get("/v1/jobs"))["code"] == "unauthorized"  # the revoking process: at once
        while cb.get("/v1/jobs").status_code == 200:  # the other: when its cached entry expires
            assert time.monotonic() - revoked_at < TTL + 2.0, "still accepted past the cache TTL"
            time.sleep(0.05)
        assert cb.get("/v1/jobs").status_code == 401


def test_another_tenants_key_cannot_be_revoked(two_servers, owner, api_settings) -> None:  # type: ignore[no-untyped-def]
    other = helpers.new_tenant(api_settings, f"other-{uuid.uuid4().hex[:8]}")
    base = two_servers[0].base_url
    theirs = _new_key(base, other.api_key, ["read"])
    with helpers.client(base, owner.api_key) as c:
        assert problem_of(c.post(f"/v1/keys/{theirs['id']}/revoke"))["code"] == "not_found"
        assert problem_of(c.post("/v1/keys/key_nothex/revoke"))["code"] == "not_found"
    with helpers.client(base, theirs["api_key"]) as c:
        assert c.get("/v1/jobs").status_code == 200


def test_the_auth_cache_ttl_is_at_most_30_seconds() -> None:
    assert Settings().auth_cache_seconds == 30
    with pytest.raises(ValueError, match="less than or equal to 30"):
        Settings(auth_cache_seconds=31)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _cli(settings: Settings, *args: str) -> Ran:
    """The command in this process (a process per command costs seconds on a small machine)."""
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["keys", *args], env={"CAPTIONQ_DATABASE_URL": settings.database_url})
    return Ran(result.exit_code, result.stdout, result.stderr)


def test_keys_cli_create_list_revoke(api_settings, two_servers) -> None:  # type: ignore[no-untyped-def]
    name = f"cli-{uuid.uuid4().hex[:8]}"
    first = json.loads(_cli(api_settings, "create", "--name", name, "--json").stdout)
    made = _cli(api_settings, "create", "--tenant", name, "--scopes", "read,admin", "--label", "ops",
                "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["scopes"] == ["read", "admin"] and key["tenant"] == first["tenant"]
    listed = json.loads(_cli(api_settings, "list", "--tenant", first["tenant"], "--json").stdout)
    assert [k["scopes"] for k in listed] == [["submit", "read", "admin"], ["read", "admin"]]
    assert _cli(api_settings, "revoke", key["id"]).returncode == 0
    active = json.loads(_cli(api_settings, "list", "--tenant", name, "--active", "--json").stdout)
    assert [k["id"] for k in active] == [listed[0]["id"]]
    bad = _cli(api_settings, "create", "--tenant", name, "--scopes", "root")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: invalid_scope: unknown scope 'root'")
    assert "Traceback" not in bad.stderr
