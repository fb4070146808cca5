"""The dashboard's pages over HTTP (no browser): sign-in and its cookie, CSRF on changes, tenant
scoping, the batch jobs filters and the overview's failure codes, against the real API server,
PostgreSQL and the broker. The browser tests are ``tests/dashboard/test_browser.py``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest

from core.settings import Settings
from tests.api import helpers

pytestmark = pytest.mark.services


def signed_in(base_url: str, api_key: str) -> httpx.Client:
    """A client holding a dashboard session (close it: ``contextlib.closing``)."""
    c = httpx.Client(base_url=base_url, timeout=30)
    r = c.post("/dashboard/login", data={"api_key": api_key, "next": "/dashboard/batches"})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/batches", r.text
    return c


def csrf_of(page: str) -> str:
    m = re.search(r'"X-CSRF-Token": "([^"]+)"', page)
    assert m, page[:500]
    return m.group(1)


@pytest.fixture
def browser_a(server, tenant_a) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    c = signed_in(server.base_url, tenant_a.api_key)
    yield c
    c.close()


@pytest.fixture
def browser_b(server, tenant_b) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    c = signed_in(server.base_url, tenant_b.api_key)
    yield c
    c.close()


@pytest.fixture
def failed_batch(api: httpx.Client, api_settings: Settings) -> dict[str, Any]:
    """A batch of three jobs of tenant A: two failed with different codes, one queued."""
    jobs = [{"custom_id": cid, "prompts": ["hi"]} for cid in ("cat_1", "cat%2", "dog-3")]
    batch = api.post("/v1/batches", json={"jobs": jobs}).json()
    listed = api.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["data"]
    by_custom = {j["custom_id"]: j["id"] for j in listed}
    svc = helpers.service(api_settings)
    try:
        for cid, code in (("cat_1", "media_not_found"), ("cat%2", "context_too_long")):
            assert svc.start(by_custom[cid]) is not None
            svc.fail(by_custom[cid], code, f"{code} for the test")
    finally:
        svc.db.dispose()
    return {"batch": batch, "jobs": by_custom}


def test_pages_need_a_session(anon: httpx.Client) -> None:
    r = anon.get("/dashboard/batches")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fbatches"
    partial = anon.get("/dashboard/batches/rows", headers={"HX-Request": "true"})
    assert partial.status_code == 401 and partial.headers["hx-redirect"].startswith("/dashboard/login")
    forged = anon.get("/dashboard/overview", cookies={"captionq_session": "eyJrIjoiY3EifQ.AAAA"})
    assert forged.status_code == 303
    assert anon.get("/dashboard/login").status_code == 200
    assert anon.get("/dashboard/static/htmx.min.js").status_code == 200


def test_sign_in_sets_a_signed_http_only_cookie(server, tenant_a) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.base_url) as c:
        bad = c.post("/dashboard/login", data={"api_key": tenant_a.api_key + "x"})
        assert bad.status_code == 401 and "not valid" in bad.text and "set-cookie" not in bad.headers
        r = c.post("/dashboard/login", data={"api_key": tenant_a.api_key, "next": "//evil.example/x"})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/overview"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/dashboard" in cookie
        assert tenant_a.api_key not in r.headers["location"]
        page = c.get("/dashboard/overview")
        assert page.status_code == 200 and tenant_a.tenant_id in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert tenant_a.api_key not in page.text
        value = c.cookies["captionq_session"]
        tampered = value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB")
        c.cookies.set("captionq_session", tampered, path="/dashboard")
        assert c.get("/dashboard/overview").status_code == 303


def test_changes_need_the_csrf_token(browser_a: httpx.Client, api: httpx.Client) -> None:
    batch = api.post("/v1/batches", json={"jobs": [{"prompts": ["hi"]}]}).json()
    refused = browser_a.post(f"/dashboard/batches/{batch['id']}/cancel")
    assert refused.status_code == 403 and api.get(f"/v1/batches/{batch['id']}").json()["status"] != "canceled"
    token = csrf_of(browser_a.get("/dashboard/batches").text)
    done = browser_a.post(f"/dashboard/batches/{batch['id']}/cancel", params={"view": "progress"},
                          headers={"X-CSRF-Token": token})
    assert done.status_code == 200 and '<section id="progress"' in done.text
    assert 'data-status="canceled"' in done.text and "Cancel batch" not in done.text
    assert api.get(f"/v1/batches/{batch['id']}").json()["status"] == "canceled"
    assert browser_a.post("/dashboard/logout", data={"csrf": token}).status_code == 303
    assert browser_a.get("/dashboard/overview").status_code == 303  # signed out


def test_another_tenants_ids_are_not_found(browser_b: httpx.Client, failed_batch: dict[str, Any]) -> None:
    batch_id = failed_batch["batch"]["id"]
    job_id = failed_batch["jobs"]["dog-3"]
    listing = browser_b.get("/dashboard/batches")
    assert listing.status_code == 200 and batch_id not in listing.text
    for path in (f"/dashboard/batches/{batch_id}", f"/dashboard/batches/{batch_id}/jobs",
                 f"/dashboard/batches/{batch_id}/progress", f"/dashboard/batches/{batch_id}/results",
                 f"/dashboard/jobs/{job_id}", f"/dashboard/jobs/{job_id}/detail",
                 f"/dashboard/jobs/{job_id}/events", f"/dashboard/jobs/{job_id}/webhooks",
                 f"/dashboard/jobs/{job_id}/media/0"):
        r = browser_b.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert job_id not in r.text.replace(f"job {job_id}", "")  # nothing but the id asked for
    token = csrf_of(listing.text)
    assert browser_b.post(f"/dashboard/batches/{batch_id}/cancel",
                          headers={"X-CSRF-Token": token}).status_code == 404


def test_batch_jobs_filter_by_status_code_and_custom_id(browser_a: httpx.Client,
                                                         failed_batch: dict[str, Any]) -> None:
    batch_id, jobs = failed_batch["batch"]["id"], failed_batch["jobs"]

    def shown(**params: str) -> set[str]:
        r = browser_a.get(f"/dashboard/batches/{batch_id}/jobs", params=params)
        assert r.status_code == 200
        return {cid for cid, jid in jobs.items() if jid in r.text}

    assert shown() == {"cat_1", "cat%2", "dog-3"}
    assert shown(status="failed") == {"cat_1", "cat%2"}
    assert shown(status="queued") == {"dog-3"}
    assert shown(error_code="context_too_long") == {"cat%2"}
    assert shown(q="cat") == {"cat_1", "cat%2"}
    assert shown(q="cat_") == {"cat_1"}  # LIKE wildcards in the search are literal
    assert shown(q="cat%") == {"cat%2"}
    assert shown(q="dog", status="failed") == set()
    page = browser_a.get(f"/dashboard/batches/{batch_id}")
    assert 'aria-valuenow="66.7"' in page.text  # two of three jobs ended


def test_overview_counts_failures_by_code(browser_a: httpx.Client, failed_batch: dict[str, Any]) -> None:
    r = browser_a.get("/dashboard/overview/panel", params={"window": "24h"})
    assert r.status_code == 200
    assert "media_not_found" in r.text and "context_too_long" in r.text
    assert "<svg" in r.text


def key_with(settings: Settings, tenant_id: str, scopes: str) -> str:
    from core.db import Database
    from jobs.tenants import add_api_key

    db = Database(settings)
    try:
        with db.session() as session:
            return add_api_key(session, tenant_id, scopes)
    finally:
        db.dispose()


def test_scopes_decide_what_a_key_sees_and_does(server, api_settings, tenant_a,  # type: ignore[no-untyped-def]
                                                api: httpx.Client) -> None:
    def session(scopes: str) -> closing[httpx.Client]:
        return closing(signed_in(server.base_url, key_with(api_settings, tenant_a.tenant_id, scopes)))

    with httpx.Client(base_url=server.base_url) as c:
        r = c.post("/dashboard/login", data={"api_key": key_with(api_settings, tenant_a.tenant_id, "submit")})
        assert r.status_code == 403 and "read scope" in r.text and "set-cookie" not in r.headers
    batch = api.post("/v1/batches", json={"jobs": [{"prompts": ["hi"]}]}).json()
    with session("read") as reader:
        page = reader.get(f"/dashboard/batches/{batch['id']}")
        assert page.status_code == 200 and "Cancel batch" not in page.text
        assert "/dashboard/fleet" not in page.text and reader.get("/dashboard/fleet").status_code == 403
        refused = reader.post(f"/dashboard/batches/{batch['id']}/cancel",
                              headers={"X-CSRF-Token": csrf_of(page.text)})
        assert refused.status_code == 403 and refused.json()["code"] == "insufficient_scope"
        assert api.get(f"/v1/batches/{batch['id']}").json()["cancel_requested_at"] is None
    with session("read submit") as user:
        page = user.get(f"/dashboard/batches/{batch['id']}")
        assert "Cancel batch" in page.text and user.get("/dashboard/fleet").status_code == 403
    with session("read admin") as operator:
        fleet = operator.get("/dashboard/fleet")
        assert fleet.status_code == 200 and 'id="queue-io"' in fleet.text
