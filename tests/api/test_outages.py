"""A database or broker outage is 503 problem+json with Retry-After on every route, and the API
serves again once the dependency is back. The API reaches the real PostgreSQL and Redis through
forwarders this module can cut (the shared servers keep running for everyone else)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from core.settings import Settings
from tests.api import helpers
from tests.api.helpers import problem_of
from tests.api.tcp_proxy import TcpProxy

pytestmark = pytest.mark.services

JOB = "job_01jf0000000000000000000000"
BAT = "bat_01jf0000000000000000000000"
MSG = "msg_01jf0000000000000000000000"
BODY = {"media": [{"type": "image", "url": "s3://bucket-a/photo.jpg"}]}

ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/jobs", BODY),
    ("GET", f"/v1/jobs/{JOB}", None),
    ("GET", f"/v1/jobs/{JOB}?wait=1", None),
    ("GET", "/v1/jobs", None),
    ("POST", f"/v1/jobs/{JOB}/cancel", None),
    ("GET", f"/v1/jobs/{JOB}/events", None),
    ("POST", "/v1/batches", {"jobs": [BODY]}),
    ("GET", f"/v1/batches/{BAT}", None),
    ("GET", "/v1/batches", None),
    ("POST", f"/v1/batches/{BAT}/cancel", None),
    ("GET", f"/v1/batches/{BAT}/results", None),
    ("GET", f"/v1/webhook-deliveries?job_id={JOB}", None),
    ("POST", f"/v1/webhook-deliveries/{MSG}/redeliver", None),
]


def _via(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.fixture(scope="module")
def outage(api_settings: Settings, tenant_a) -> Iterator[tuple[Any, TcpProxy, TcpProxy]]:  # type: ignore[no-untyped-def]
    pg, rd = urlsplit(api_settings.database_url), urlsplit(api_settings.broker_url or "")
    db_proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432)
    broker_proxy = TcpProxy(rd.hostname or "127.0.0.1", rd.port or 6379)
    settings = api_settings.model_copy(update={
        "database_url": _via(api_settings.database_url, db_proxy),
        "broker_url": _via(api_settings.broker_url or "", broker_proxy),
    })
    srv = helpers.start_server(settings)
    try:
        with helpers.client(srv.base_url, tenant_a.api_key) as c:
            c.timeout = 30
            assert c.get("/v1/jobs", params={"limit": 1}).status_code == 200  # the key is cached now
            yield c, db_proxy, broker_proxy
    finally:
        srv.stop()
        db_proxy.cut()
        broker_proxy.cut()


def _call(c: Any, method: str, path: str, body: Any) -> Any:
    return c.request(method, path, json=body) if body is not None else c.request(method, path)


def _unavailable(resp: Any) -> None:
    assert resp.status_code == 503, (resp.request.url, resp.status_code, resp.text[:300])
    assert problem_of(resp)["code"] == "unavailable"
    assert int(resp.headers["retry-after"]) > 0
    assert "127.0.0.1" not in resp.text and "5432" not in resp.text  # no driver error passed on


def test_database_outage_is_503_on_every_route_then_recovers(outage) -> None:  # type: ignore[no-untyped-def]
    c, db_proxy, _ = outage
    db_proxy.cut()
    try:
        for method, path, body in ROUTES:
            _unavailable(_call(c, method, path, body))
    finally:
        db_proxy.restore()
    assert c.get("/v1/jobs", params={"limit": 1}).status_code == 200
    assert c.post("/v1/jobs", json=BODY).status_code == 202


def test_broker_outage_is_never_a_500(outage) -> None:  # type: ignore[no-untyped-def]
    """A submission while the broker is down is accepted (its message waits in the outbox for the
    sweeper); a route that needs the broker answers 503."""
    c, _, broker_proxy = outage
    broker_proxy.cut()
    try:
        for method, path, body in ROUTES:
            resp = _call(c, method, path, body)
            assert resp.status_code < 500 or resp.status_code == 503, (path, resp.text[:300])
            if resp.status_code == 503:
                _unavailable(resp)
        assert c.post("/v1/jobs", json=BODY).status_code == 202
    finally:
        broker_proxy.restore()
