"""Input the database cannot store, ids that cannot exist, and errors nobody planned for: each a
4xx (or a 500 that leaves the connection usable), never a driver error passed on. Real HTTP
against the module's uvicorn server and PostgreSQL."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.exc

from core.errors import as_captionq_error
from tests.api.helpers import problem_of

pytestmark = pytest.mark.services

IMG = {"type": "image", "url": "s3://bucket-a/photo.jpg"}
GOOD_JOB_ID = "job_01jf0000000000000000000000"  # the form of an id; no such job


def unsupported(resp: Any, loc: list[Any]) -> dict[str, Any]:
    assert resp.status_code == 422, resp.text[:300]
    body = problem_of(resp)
    assert body["code"] == "unsupported_character", body
    assert loc in [e["loc"] for e in body["errors"]], body["errors"]
    return body


@pytest.mark.parametrize(("body", "loc"), [
    ({"media": [IMG], "prompts": ["a\x00b"]}, ["prompts", 0]),
    ({"media": [IMG], "metadata": {"k": "v\x00"}}, ["metadata", "k"]),
    ({"media": [IMG], "metadata": {"k\x00": "v"}}, ["metadata", "k\ufffd"]),
    ({"media": [IMG], "custom_id": "x\x00"}, ["custom_id"]),
    ({"media": [{**IMG, "url": "s3://bucket-a/a\x00.jpg"}]}, ["media", 0, "url"]),
])
def test_nul_in_a_job_body_is_422_naming_the_field(api, body, loc) -> None:  # type: ignore[no-untyped-def]
    unsupported(api.post("/v1/jobs", json=body), loc)


def test_nul_in_a_batch_body_is_422_naming_the_field(api) -> None:  # type: ignore[no-untyped-def]
    unsupported(api.post("/v1/batches", json={"jobs": [{"media": [IMG], "prompts": ["\x00"]}]}),
                ["jobs", 0, "prompts", 0])
    unsupported(api.post("/v1/batches", json={"jobs": [{"media": [IMG]}], "metadata": {"a": "\x00"}}),
                ["metadata", "a"])


def test_manifest_lines_with_nul_are_named_or_kept_as_failed_jobs(api, s3_bucket) -> None:  # type: ignore[no-untyped-def]
    import json

    ok = json.dumps({"media": [IMG], "custom_id": "ok"})
    bad = json.dumps({"media": [IMG], "prompts": ["a\x00"], "custom_id": "bad\x00",
                      "metadata": {"k\x00": "v\x00"}})
    url = s3_bucket.put("manifests/nul.jsonl", f"{ok}\n{bad}\n".encode())
    refused = api.post("/v1/batches", json={"manifest_url": url})
    unsupported(refused, ["manifest", 2, "prompts", 0])
    kept = api.post("/v1/batches", json={"manifest_url": url, "skip_invalid": True})
    assert kept.status_code == 202, kept.text[:300]
    assert kept.json()["counts"]["failed"] == 1
    lines = [json.loads(x) for x in api.get(f"/v1/batches/{kept.json()['id']}/results").text.splitlines()]
    failed = [x for x in lines if x["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"]["code"] == "invalid_request"
    assert failed[0]["custom_id"] is None or "\x00" not in failed[0]["custom_id"]
    assert failed[0]["metadata"] == {"k\ufffd": "v\ufffd"}  # stored, made storable


def test_lone_surrogate_in_a_body_is_422_not_malformed_json(api) -> None:  # type: ignore[no-untyped-def]
    raw = b'{"media": [{"type": "image", "url": "s3://bucket-a/p.jpg"}], "prompts": ["x\\ud800y"]}'
    resp = api.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    unsupported(resp, ["prompts", 0])
    assert "\\ud800" not in resp.text  # the answer itself is valid UTF-8


@pytest.mark.parametrize(("path", "params", "loc"), [
    ("/v1/jobs", {"custom_id": "a\x00"}, ["query", "custom_id"]),
    ("/v1/jobs", {"batch_id": "\x00"}, ["query", "batch_id"]),
    ("/v1/jobs", {"status": "queued\x00"}, ["query", "status"]),
    ("/v1/jobs", {"cursor": "\x00"}, ["query", "cursor"]),
    ("/v1/batches", {"status": "\x00"}, ["query", "status"]),
    ("/v1/webhook-deliveries", {"job_id": "job_\x00"}, ["query", "job_id"]),
])
def test_nul_in_a_query_filter_is_422(api, path, params, loc) -> None:  # type: ignore[no-untyped-def]
    unsupported(api.get(path, params=params), loc)


@pytest.mark.parametrize(("method", "path", "name"), [
    ("GET", "/v1/jobs/job_%00", "job_id"),
    ("POST", "/v1/jobs/job_%00/cancel", "job_id"),
    ("GET", "/v1/jobs/job_%00/events", "job_id"),
    ("GET", "/v1/batches/bat_%00", "batch_id"),
    ("POST", "/v1/batches/bat_%00/cancel", "batch_id"),
    ("GET", "/v1/batches/bat_%00/results", "batch_id"),
    ("POST", "/v1/webhook-deliveries/msg_%00/redeliver", "message_id"),
])
def test_nul_in_a_path_id_is_422(api, method, path, name) -> None:  # type: ignore[no-untyped-def]
    unsupported(api.request(method, path), ["path", name])


@pytest.fixture
def statements(server):  # type: ignore[no-untyped-def]
    """Every SQL statement's parameters the API runs while the test does."""
    engine = server.app.state.ctx.db.engine
    seen: list[str] = []

    def record(_conn, _cursor, statement, parameters, _context, _many):  # type: ignore[no-untyped-def]
        seen.append(f"{statement} {parameters!r}")

    sa.event.listen(engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(engine, "before_cursor_execute", record)


@pytest.mark.parametrize(("method", "path", "bad_id"), [
    ("GET", "/v1/jobs/{}", "job_nope"),
    ("GET", "/v1/jobs/{}", "bat_01jf0000000000000000000000"),  # another kind's prefix
    ("GET", "/v1/jobs/{}", "job_01JF0000000000000000000000"),  # ids are lower case
    ("GET", "/v1/jobs/{}", "job_91jf0000000000000000000000"),  # past 128 bits
    ("GET", "/v1/jobs/{}", "job_01jf000000000000000000000u"),  # not Crockford base32
    ("POST", "/v1/jobs/{}/cancel", "x" * 300),
    ("GET", "/v1/jobs/{}/events", "job_"),
    ("GET", "/v1/batches/{}", "bat_1"),
    ("POST", "/v1/batches/{}/cancel", "job_01jf0000000000000000000000"),
    ("GET", "/v1/batches/{}/results", "bat_zz"),
    ("POST", "/v1/webhook-deliveries/{}/redeliver", "msg_"),
    ("GET", "/v1/webhook-deliveries?job_id={}", "job_1"),
    ("GET", "/v1/webhook-deliveries?batch_id={}", "bat_1"),
])
def test_an_id_that_cannot_exist_is_404_without_a_query(  # type: ignore[no-untyped-def]
        api, statements, method, path, bad_id) -> None:
    api.get("/v1/jobs", params={"limit": 1})  # the key is verified and cached before counting
    statements.clear()
    resp = api.request(method, path.format(bad_id))
    assert resp.status_code == 404, resp.text[:300]
    assert problem_of(resp)["code"] == "not_found"
    assert not [s for s in statements if bad_id in s], statements


def test_an_id_of_the_right_form_is_looked_up(api, statements) -> None:  # type: ignore[no-untyped-def]
    statements.clear()
    assert api.get(f"/v1/jobs/{GOOD_JOB_ID}").status_code == 404
    assert [s for s in statements if GOOD_JOB_ID in s]  # the check above can fail


def test_an_unauthenticated_impossible_id_is_still_401(anon) -> None:  # type: ignore[no-untyped-def]
    assert anon.get("/v1/jobs/job_nope").status_code == 401


# --- unexpected errors --------------------------------------------------------------------------
class _LibraryError(sqlalchemy.exc.ProgrammingError):
    code = "e3q8"  # SQLAlchemy's documentation-link id, an attribute of its exceptions


def test_a_library_code_is_never_adopted() -> None:
    exc = _LibraryError("SELECT 1", {}, Exception("boom"))
    assert exc.code == "e3q8"
    assert as_captionq_error(exc).code == "internal"
    assert as_captionq_error(sqlalchemy.exc.OperationalError("x", {}, Exception("down"))).code == "internal"


@pytest.fixture(scope="module")
def failing_routes(server):  # type: ignore[no-untyped-def]
    async def boom() -> None:
        raise RuntimeError("an unplanned bug")

    async def driver_error() -> None:
        raise _LibraryError("SELECT 1", {}, Exception("syntax"))

    server.app.add_api_route("/test-only/boom", boom, include_in_schema=False)
    server.app.add_api_route("/test-only/driver-error", driver_error, include_in_schema=False)
    return server


def _exchange(sock: socket.socket, path: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on an open socket; the response read by its Content-Length."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection answering {path}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("path", ["/test-only/boom", "/test-only/driver-error"])
def test_a_500_is_a_problem_and_keeps_the_connection_usable(failing_routes, path) -> None:  # type: ignore[no-untyped-def]
    host, port = failing_routes.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for _ in range(2):
            status, headers, body = _exchange(sock, path)
            assert status == 500
            assert headers["content-type"].startswith("application/problem+json")
            assert b'"code":"internal"' in body.replace(b" ", b""), body
            assert b"e3q8" not in body and b"syntax" not in body and b"unplanned" not in body
            assert headers.get("connection", "").lower() != "close"
            status, _, body = _exchange(sock, "/healthz")  # the next request, same connection
            assert status == 200, body
