# ruff: noqa: E501  (a table reads best one case per line)
"""Hostile and malformed requests for the fault suite's API scenarios.

The bad-request corpus of tests/api/test_bad_requests.py (each with its exact status and code),
plus requests built here: NUL and lone surrogates in every body field, every query parameter and
every path id of the OpenAPI document; ids that cannot exist; SSRF targets spelled every way;
bad headers, Idempotency-Keys, content types, JSON and credentials. Each must get a 4xx
problem+json (or, while PostgreSQL is down, 503 problem+json with Retry-After).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tests.api.test_bad_requests import CASES

NUL, SURROGATE = "\x00", "\ud800"  # PostgreSQL stores neither; UTF-8 cannot encode the second


@dataclass
class Hostile:
    name: str
    method: str
    path: str
    content: bytes | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    auth: str = "a"  # a, b, none, or a literal Authorization value
    status: int | None = None  # the exact status expected, where it is certain
    code: str | None = None


def _json(body: Any) -> bytes:
    # ensure_ascii keeps a lone surrogate as the JSON escape \ud800, as a hostile client sends it
    return json.dumps(body, ensure_ascii=True).encode()


def _job(**kw: Any) -> dict[str, Any]:
    return {"media": [{"type": "image", "url": "s3://bucket-a/photo.jpg"}], **kw}


def from_corpus(ctx: dict[str, Any]) -> list[Hostile]:
    """tests/api/test_bad_requests.py's cases, with their exact expected answers."""
    out = []
    for case in CASES:
        path = case.path
        if path.startswith("{"):
            key, _, rest = path[1:].partition("}")
            path = ctx[key] + rest
        body = case.body(ctx) if callable(case.body) else case.body
        if case.raw == b"chunked":
            content: bytes | None = b'{"metadata": {"x": "' + b"y" * (40 * 65536) + b'"}}'
        elif case.raw is not None:
            content = case.raw
        else:
            content = None if body is None else _json(body)
        headers = dict(case.headers)
        if content is not None and "content-type" not in headers:
            headers["content-type"] = "application/json"
        auth = {"a": "a", "b": "b", "none": "none", "bad": "Bearer cq_key_deadbeef_nope",
                "basic": "Basic dXNlcjpwYXNz"}[case.auth]
        out.append(Hostile(f"corpus: {case.name}", case.method, path, content, headers, case.params, auth,
                           case.status, case.code))
    return out


def _strings_in_bodies(bad: str, label: str) -> list[Hostile]:
    job_fields = {
        "prompt": _job(prompts=[f"a{bad}b"]),
        "custom_id": _job(custom_id=f"c{bad}"),
        "metadata value": _job(metadata={"k": f"v{bad}"}),
        "metadata key": _job(metadata={f"k{bad}": "v"}),
        "media url": {"media": [{"type": "image", "url": f"s3://bucket-a/p{bad}.jpg"}]},
        "webhook url": _job(webhook={"url": f"https://hooks.example.com/{bad}"}),
    }
    out = [Hostile(f"{label} in job {name}", "POST", "/v1/jobs", _json(body),
                   {"content-type": "application/json"}, status=422)
           for name, body in job_fields.items()]
    batch_fields = {
        "inline job custom_id": {"jobs": [_job(custom_id=f"c{bad}")]},
        "inline job prompt": {"jobs": [_job(prompts=[f"p{bad}"])]},
        "manifest_url": {"manifest_url": f"s3://bucket-a/m{bad}.jsonl"},
        "output_url": {"jobs": [_job()], "output_url": f"s3://bucket-a/o{bad}/"},
        "defaults prompt": {"jobs": [_job()], "defaults": {"prompts": [f"p{bad}"]}},
    }
    out += [Hostile(f"{label} in batch {name}", "POST", "/v1/batches", _json(body),
                    {"content-type": "application/json"}, status=422)
            for name, body in batch_fields.items()]
    return out


def _every_parameter(document: dict[str, Any]) -> list[Hostile]:
    """NUL, a lone surrogate (as invalid percent-encoded UTF-8) and hostile ids in every path
    and query parameter the OpenAPI document lists."""
    out: list[Hostile] = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            in_path = [p["name"] for p in params if p["in"] == "path"]
            if in_path:
                for label, raw in [("NUL", "%00"), ("lone surrogate", "%ED%A0%80"), ("SQL", quote("x' OR '1'='1")),
                                   ("dot-dot", "..%2F..%2Fetc%2Fpasswd"), ("10k chars", "job_" + "a" * 10000),
                                   ("wrong prefix", "bat_00000000000000000000000000"), ("emoji", quote("job_😀"))]:
                    concrete = path
                    for name in in_path:
                        concrete = concrete.replace("{" + name + "}", raw)
                    out.append(Hostile(f"{label} as {method.upper()} {path} id", method.upper(), concrete))
            for p in params:
                if p["in"] != "query":
                    continue
                # (invalid UTF-8 in a query string is read as U+FFFD, a storable character)
                out.append(Hostile(f"NUL in {method.upper()} {path}?{p['name']}", method.upper(), path,
                                   params={p["name"]: f"x{NUL}"}, status=422))
    # /healthz, /readyz and /metrics take no parameters; a NUL in the list routes' ids is above.
    return [h for h in out if not h.path.startswith(("/healthz", "/readyz", "/metrics"))]


SSRF = [
    "http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/", "http://2852039166/",
    "http://0251.0376.0251.0376/", "http://0xa9fea9fe/", "http://169.254.169.254.:80/", "http://127.1/",
    "http://0x7f000001/", "http://0/", "http://0.0.0.0/", "http://[::]/", "http://localhost./",
    "http://LOCALHOST/", "http://sub.localhost/", "http://[fd00::1]/", "http://[fe80::1%25eth0]/",
    "http://192.168.0.1/", "http://100.64.0.1/", "http://metadata.google.internal/",
    "http://example.com@127.0.0.1/", "gopher://127.0.0.1:6379/_FLUSHALL", "dict://127.0.0.1:6379/",
    "http://127.0.0.1:5432/", "jar:http://127.0.0.1!/", "//127.0.0.1/a.jpg",
]


def _ssrf() -> list[Hostile]:
    out = []
    for url in SSRF:
        out.append(Hostile(f"SSRF media {url}", "POST", "/v1/jobs",
                           _json({"media": [{"type": "image", "url": url}]}), {"content-type": "application/json"},
                           status=422))
    for url in SSRF[:8]:
        out.append(Hostile(f"SSRF webhook {url}", "POST", "/v1/jobs", _json(_job(webhook={"url": url})),
                           {"content-type": "application/json"}, status=422))
        out.append(Hostile(f"SSRF manifest {url}", "POST", "/v1/batches", _json({"manifest_url": url}),
                           {"content-type": "application/json"}, status=422))
    return out


def _protocol(a_key: str) -> list[Hostile]:
    ct = {"content-type": "application/json"}
    ok = _json(_job())
    return [
        # JSON that is not JSON
        Hostile("trailing garbage", "POST", "/v1/jobs", ok + b"x", ct, status=400),
        Hostile("invalid UTF-8 in a string", "POST", "/v1/jobs", b'{"prompts": ["\xff\xfe"], "media": []}', ct),
        Hostile("UTF-16 body", "POST", "/v1/jobs", json.dumps(_job()).encode("utf-16"), ct),
        Hostile("number 1e400", "POST", "/v1/jobs", b'{"media": [], "priority": 1e400}', ct),
        Hostile("integer 10**100", "POST", "/v1/jobs", _json(_job(priority=10**100)), ct, status=422),
        Hostile("Infinity", "POST", "/v1/jobs", b'{"priority": Infinity}', ct, status=400),
        Hostile("null body", "POST", "/v1/jobs", b"null", ct, status=422),
        Hostile("2 MB of spaces", "POST", "/v1/jobs", b" " * (2 * 1024 * 1024 + 10), ct),
        Hostile("20 MB body", "POST", "/v1/jobs", b"{" + b" " * (20 * 1024 * 1024) + b"}", ct, status=413),
        Hostile("10k prompts", "POST", "/v1/jobs", _json(_job(prompts=["p"] * 10000)), ct, status=422),
        Hostile("100k media items", "POST", "/v1/jobs", _json({"media": [{"type": "image", "url": "s3://b/a"}] * 20000}), ct),
        Hostile("types swapped", "POST", "/v1/jobs", _json({"media": {"type": 1}, "prompts": {"a": 1}, "priority": "x"}), ct, status=422),
        Hostile("batch jobs not a list", "POST", "/v1/batches", _json({"jobs": "nope"}), ct, status=422),
        # content types (a JSON body without one is read as JSON, as curl -d sends it)
        Hostile("JSON body as text/plain", "POST", "/v1/batches", _json({"jobs": [_job()]}), {"content-type": "text/plain"}, status=415),
        Hostile("form body", "POST", "/v1/jobs", b"media=x", {"content-type": "application/x-www-form-urlencoded"}, status=415),
        Hostile("multipart body", "POST", "/v1/jobs", b"--x\r\n\r\n--x--", {"content-type": "multipart/form-data; boundary=x"}, status=415),
        Hostile("XML body", "POST", "/v1/batches", b"<jobs/>", {"content-type": "application/xml"}, status=415),
        # headers and Idempotency-Keys (bytes h11 refuses to carry never reach the application)
        Hostile("300-character Idempotency-Key on a batch", "POST", "/v1/batches", _json({"jobs": [_job()]}),
                {**ct, "Idempotency-Key": "k" * 300}, status=422),
        Hostile("empty Idempotency-Key", "POST", "/v1/jobs", ok, {**ct, "Idempotency-Key": ""}, status=422),
        Hostile("10 KB Idempotency-Key", "POST", "/v1/jobs", ok, {**ct, "Idempotency-Key": "k" * 10000}),
        # credentials
        Hostile("bearer without a token", "GET", "/v1/jobs", auth="Bearer", status=401, code="unauthorized"),
        Hostile("malformed key", "GET", "/v1/jobs", auth="Bearer cq_key_", status=401, code="unauthorized"),
        Hostile("10 KB key", "GET", "/v1/jobs", auth="Bearer cq_key_" + "a" * 10000, status=401, code="unauthorized"),
        Hostile("key with NUL-like escape", "GET", "/v1/jobs", auth="Bearer cq_key_%00_x", status=401, code="unauthorized"),
        Hostile("right secret, wrong key id", "GET", "/v1/jobs", auth="Bearer cq_key_zzzzzzzz_" + a_key.rsplit("_", 1)[-1],
                status=401, code="unauthorized"),
        Hostile("key as Token scheme", "GET", "/v1/jobs", auth=f"Token {a_key}", status=401, code="unauthorized"),
        Hostile("no auth on a POST", "POST", "/v1/jobs", ok, ct, auth="none", status=401, code="unauthorized"),
        Hostile("no auth on SSE", "GET", "/v1/jobs/job_00000000000000000000000000/events", auth="none", status=401),
        # methods
        Hostile("PUT a job", "PUT", "/v1/jobs/job_00000000000000000000000000", ok, ct, status=405),
        Hostile("PATCH batches", "PATCH", "/v1/batches", ok, ct, status=405),
        Hostile("TRACE", "TRACE", "/v1/jobs", status=405),
    ]


def build(ctx: dict[str, Any], document: dict[str, Any], a_key: str) -> list[Hostile]:
    out = from_corpus(ctx)
    out += _strings_in_bodies(NUL, "NUL") + _strings_in_bodies(SURROGATE, "lone surrogate")
    out += _every_parameter(document) + _ssrf() + _protocol(a_key)
    return out
