# ruff: noqa: E501  (a table reads best one case per line)
"""The bad-request corpus: every case gets the right status and problem ``code`` (and, for 422,
``errors`` that point at the bad field), never a 5xx. Table-driven, over real HTTP."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.api import helpers
from tests.api.helpers import problem_of

pytestmark = pytest.mark.services

S3 = "s3://bucket-a/photo.jpg"
IMG = {"type": "image", "url": S3}
VID = {"type": "video", "url": "s3://bucket-a/clip.mp4"}


def job(**kw: Any) -> dict[str, Any]:
    return {"media": [IMG], **kw}


def img(**kw: Any) -> dict[str, Any]:
    return {"media": [{**IMG, **kw}]}


def vid(**kw: Any) -> dict[str, Any]:
    return {"media": [{**VID, **kw}]}


def nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = {"a": v}
    return v


@dataclass
class Case:
    name: str
    status: int
    code: str
    method: str = "POST"
    path: str = "/v1/jobs"
    body: Any = None  # JSON body, or a function of the context
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    loc: list[Any] | None = None  # expected among errors[].loc
    auth: str = "a"  # a (tenant a), b (tenant b), none, bad, basic


def _data(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode()


CASES: list[Case] = [
    # --- schema: unknown fields, wrong types, ranges ---------------------------------------------
    Case("unknown top-level field", 422, "invalid_request", body=job(bogus=1), loc=["bogus"]),
    Case("unknown media field", 422, "invalid_request", body=img(foo=1), loc=["media", 0, "foo"]),
    Case("media not a list", 422, "invalid_request", body={"media": S3}, loc=["media"]),
    Case("unknown media type", 422, "invalid_request", body={"media": [{"type": "audio", "url": S3}]}),
    Case("media item without url", 422, "invalid_request", body={"media": [{"type": "image"}]},
         loc=["media", 0, "url"]),
    Case("max_tiles 0", 422, "invalid_request", body=img(max_tiles=0), loc=["media", 0, "max_tiles"]),
    Case("max_tiles 41", 422, "invalid_request", body=img(max_tiles=41), loc=["media", 0, "max_tiles"]),
    Case("max_tiles as string", 422, "invalid_request", body=img(max_tiles="12"), loc=["media", 0, "max_tiles"]),
    Case("max_tiles fractional", 422, "invalid_request", body=img(max_tiles=1.5), loc=["media", 0, "max_tiles"]),
    Case("num_frames 65", 422, "invalid_request", body=vid(num_frames=65), loc=["media", 0, "num_frames"]),
    Case("num_frames 0", 422, "invalid_request", body=vid(num_frames=0), loc=["media", 0, "num_frames"]),
    Case("negative start", 422, "invalid_request", body=vid(start=-1.0), loc=["media", 0, "start"]),
    Case("end before start", 422, "invalid_request", body=vid(start=5.0, end=2.0), loc=["media", 0]),
    Case("bad image_mode", 422, "invalid_request", body=job(image_mode="tiled"), loc=["image_mode"]),
    Case("empty prompt list", 422, "invalid_request", body=job(prompts=[]), loc=["prompts"]),
    Case("empty prompt", 422, "invalid_request", body=job(prompts=[""]), loc=["prompts", 0]),
    Case("blank prompt", 422, "invalid_request", body=job(prompts=["ok", "   "]), loc=["prompts", 1]),
    Case("prompts as string", 422, "invalid_request", body=job(prompts="hi"), loc=["prompts"]),
    Case("prompt not a string", 422, "invalid_request", body=job(prompts=[1]), loc=["prompts", 0]),
    Case("bad task", 422, "invalid_request", body=job(task="detect"), loc=["task"]),
    Case("grounding without an image", 422, "invalid_request", body={"media": [VID], "task": "grounding",
                                                                     "prompts": ["the car"]}, loc=["media"]),
    Case("max_new_tokens 0", 422, "invalid_request", body=job(generation={"max_new_tokens": 0}),
         loc=["generation", "max_new_tokens"]),
    Case("temperature 5", 422, "invalid_request", body=job(generation={"temperature": 5}),
         loc=["generation", "temperature"]),
    Case("top_p 0", 422, "invalid_request", body=job(generation={"top_p": 0}), loc=["generation", "top_p"]),
    Case("sampling at temperature 0", 422, "invalid_request",
         body=job(generation={"do_sample": True, "temperature": 0})),
    Case("unknown generation field", 422, "invalid_request", body=job(generation={"beams": 4}),
         loc=["generation", "beams"]),
    Case("do_sample as string", 422, "invalid_request", body=job(generation={"do_sample": "yes"}),
         loc=["generation", "do_sample"]),
    Case("priority 10", 422, "invalid_request", body=job(priority=10), loc=["priority"]),
    Case("priority -1", 422, "invalid_request", body=job(priority=-1), loc=["priority"]),
    Case("ttl 0", 422, "invalid_request", body=job(ttl_seconds=0), loc=["ttl_seconds"]),
    Case("empty custom_id", 422, "invalid_request", body=job(custom_id=""), loc=["custom_id"]),
    Case("custom_id too long", 422, "invalid_request", body=job(custom_id="x" * 300), loc=["custom_id"]),
    Case("metadata not an object", 422, "invalid_request", body=job(metadata=[1]), loc=["metadata"]),
    Case("metadata over 16 KB", 422, "metadata_too_large", body=job(metadata={"x": "y" * 17000}),
         loc=["metadata"]),
    Case("metadata nested 40 deep", 422, "metadata_too_large", body=job(metadata=nested(40)), loc=["metadata"]),
    Case("context too long", 422, "context_too_long",
         body={"media": [{**VID, "num_frames": 64}] * 3, "prompts": ["Describe."]}, loc=["prompts"]),
    Case("webhook unknown event", 422, "invalid_request",
         body=job(webhook={"url": "https://h.example.com/x", "events": ["job.exploded"]}),
         loc=["webhook", "events", 0]),
    Case("batch event on a job webhook", 422, "invalid_request",
         body=job(webhook={"url": "https://h.example.com/x", "events": ["batch.completed"]}),
         loc=["webhook", "events"]),
    # --- URLs --------------------------------------------------------------------------------------
    Case("ftp scheme", 422, "url_not_allowed", body=img(url="ftp://example.com/a.jpg"), loc=["media", 0, "url"]),
    Case("no scheme", 422, "url_not_allowed", body=img(url="photo.jpg"), loc=["media", 0, "url"]),
    Case("private address", 422, "url_not_allowed", body=img(url="http://10.0.0.1/a.jpg"),
         loc=["media", 0, "url"]),
    Case("loopback address", 422, "url_not_allowed", body=img(url="http://127.0.0.1:8080/a.jpg")),
    Case("localhost name", 422, "url_not_allowed", body=img(url="http://localhost/a.jpg")),
    Case("IPv6 loopback", 422, "url_not_allowed", body=img(url="http://[::1]/a.jpg")),
    Case("cloud metadata", 422, "url_not_allowed", body=img(url="http://169.254.169.254/latest/meta-data")),
    Case("credentials in URL", 422, "url_not_allowed", body=img(url="https://u:p@example.com/a.jpg")),
    Case("file URL outside local mode", 422, "url_not_allowed", body=img(url="file:///etc/passwd")),
    Case("bad bucket name", 422, "url_not_allowed", body=img(url="s3://Bad_Bucket/x.jpg")),
    Case("s3 URL without key", 422, "url_not_allowed", body=img(url="s3://bucket-a")),
    Case("data URI not base64", 422, "url_not_allowed", body=img(url="data:image/png,abc")),
    Case("data URI bad base64", 422, "url_not_allowed", body=img(url="data:image/png;base64,@@@@")),
    Case("data URI not an image", 422, "unsupported_media",
         body=img(url=_data("image/png", b"hello world, not a png at all"))),
    Case("data URI declares video for an image item", 422, "unsupported_media",
         body=lambda ctx: img(url=_data("video/mp4", ctx["png"]))),
    Case("data URI too large", 422, "media_too_large",
         body=lambda ctx: img(url=_data("image/png", ctx["png"] + b"\0" * 70_000))),
    Case("webhook to loopback", 422, "url_not_allowed", body=job(webhook={"url": "http://127.0.0.1/hook"}),
         loc=["webhook", "url"]),
    Case("webhook ftp", 422, "url_not_allowed", body=job(webhook={"url": "ftp://h.example.com/x"})),
    # --- bodies ------------------------------------------------------------------------------------
    Case("malformed JSON", 400, "invalid_json", raw=b'{"media": ['),
    Case("empty body", 400, "invalid_json", raw=b""),
    Case("NaN in JSON", 400, "invalid_json", raw=b'{"priority": NaN}'),
    Case("JSON array body", 422, "invalid_request", body=[IMG]),
    Case("JSON string body", 422, "invalid_request", body="hello"),
    Case("deep JSON", 422, "json_too_deep", raw=b'{"metadata": ' + b'{"a": ' * 300 + b"1" + b"}" * 301),
    Case("deep JSON array", 422, "json_too_deep", raw=b"[" * 5000 + b"]" * 5000),
    Case("oversized body", 413, "payload_too_large", body=job(metadata={"x": "y" * (3 * 1024 * 1024)})),
    Case("oversized chunked body", 413, "payload_too_large", raw=b"chunked"),
    Case("wrong content type", 415, "unsupported_content_type", raw=b"{}",
         headers={"content-type": "text/plain"}),
    Case("idempotency key too long", 422, "invalid_request", body=job(), headers={"Idempotency-Key": "k" * 300},
         loc=["header", "Idempotency-Key"]),
    # --- auth, routing, ids --------------------------------------------------------------------------
    Case("no API key", 401, "unauthorized", method="GET", path="/v1/jobs", auth="none"),
    Case("bad API key", 401, "unauthorized", method="GET", path="/v1/jobs", auth="bad"),
    Case("basic auth", 401, "unauthorized", method="GET", path="/v1/jobs", auth="basic"),
    Case("unknown job", 404, "not_found", method="GET", path="/v1/jobs/job_00000000000000000000000000"),
    Case("other tenant's job", 404, "not_found", method="GET", path="{job_id}", auth="b"),
    Case("other tenant's cancel", 404, "not_found", path="{job_id}/cancel", auth="b"),
    Case("unknown route", 404, "not_found", method="GET", path="/v1/nothing-here"),
    Case("wrong method", 405, "method_not_allowed", method="DELETE", path="/v1/jobs"),
    Case("cancel a finished job", 409, "job_finished", path="{finished_job_id}/cancel"),
    # --- lists ---------------------------------------------------------------------------------------
    Case("limit 0", 422, "invalid_request", method="GET", path="/v1/jobs", params={"limit": 0},
         loc=["query", "limit"]),
    Case("limit 1001", 422, "invalid_request", method="GET", path="/v1/jobs", params={"limit": 1001}),
    Case("limit not a number", 422, "invalid_request", method="GET", path="/v1/jobs", params={"limit": "ten"}),
    Case("garbage cursor", 422, "invalid_cursor", method="GET", path="/v1/jobs", params={"cursor": "!!nope"},
         loc=["query", "cursor"]),
    Case("well-formed but foreign cursor", 422, "invalid_cursor", method="GET", path="/v1/jobs",
         params={"cursor": base64.urlsafe_b64encode(b'{"x": 1}').decode()}),
    Case("batch list bad cursor", 422, "invalid_cursor", method="GET", path="/v1/batches",
         params={"cursor": "abc"}),
    Case("unknown status filter", 422, "invalid_request", method="GET", path="/v1/jobs",
         params={"status": "exploded"}, loc=["query", "status"]),
    Case("bad created_after", 422, "invalid_request", method="GET", path="/v1/jobs",
         params={"created_after": "yesterday"}, loc=["query", "created_after"]),
    Case("wait 61", 422, "invalid_request", method="GET", path="{job_id}", params={"wait": 61},
         loc=["query", "wait"]),
    Case("negative wait", 422, "invalid_request", method="GET", path="{job_id}", params={"wait": -1}),
    Case("deliveries without a filter", 422, "invalid_request", method="GET", path="/v1/webhook-deliveries"),
    # --- batches -------------------------------------------------------------------------------------
    Case("empty batch body", 422, "invalid_request", path="/v1/batches", body={}),
    Case("jobs and manifest", 422, "invalid_request", path="/v1/batches",
         body={"jobs": [job()], "manifest_url": "s3://bucket-a/m.jsonl"}),
    Case("no jobs", 422, "invalid_request", path="/v1/batches", body={"jobs": []}, loc=["jobs"]),
    Case("too many inline jobs", 422, "invalid_request", path="/v1/batches", body={"jobs": [job()] * 501},
         loc=["jobs"]),
    Case("duplicate custom_id inline", 422, "duplicate_custom_id", path="/v1/batches",
         body={"jobs": [job(custom_id="a"), job(custom_id="b"), job(custom_id="a")]},
         loc=["jobs", 2, "custom_id"]),
    Case("invalid inline job", 422, "invalid_request", path="/v1/batches",
         body={"jobs": [job(), img(max_tiles=99)]}, loc=["jobs", 1, "media", 0, "max_tiles"]),
    Case("manifest over http", 422, "url_not_allowed", path="/v1/batches",
         body={"manifest_url": "https://example.com/m.jsonl"}, loc=["manifest_url"]),
    Case("missing manifest", 422, "media_not_found", path="/v1/batches",
         body=lambda ctx: {"manifest_url": f"s3://{ctx['bucket']}/manifests/missing.jsonl"},
         loc=["manifest_url"]),
    Case("manifest line errors", 422, "url_not_allowed", path="/v1/batches",
         body=lambda ctx: {"manifest_url": ctx["bad_manifest"]}, loc=["manifest", 17, "media", 0, "url"]),
    Case("manifest duplicate custom_id", 422, "duplicate_custom_id", path="/v1/batches",
         body=lambda ctx: {"manifest_url": ctx["dup_manifest"]}, loc=["manifest", 3, "custom_id"]),
    Case("output_url over https", 422, "url_not_allowed", path="/v1/batches",
         body={"jobs": [job()], "output_url": "https://example.com/out/"}, loc=["output_url"]),
    Case("unknown defaults field", 422, "invalid_request", path="/v1/batches",
         body={"jobs": [job()], "defaults": {"colour": "red"}}, loc=["defaults", "colour"]),
    Case("bad defaults value", 422, "invalid_request", path="/v1/batches",
         body={"jobs": [job()], "defaults": {"priority": 99}}, loc=["defaults", "priority"]),
    Case("skip_invalid as string", 422, "invalid_request", path="/v1/batches",
         body={"jobs": [job()], "skip_invalid": "yes"}, loc=["skip_invalid"]),
    Case("batch webhook unknown event", 422, "invalid_request", path="/v1/batches",
         body={"jobs": [job()], "webhook": {"url": "https://h.example.com/", "events": ["batch.exploded"]}}),
    Case("unknown batch", 404, "not_found", method="GET", path="/v1/batches/bat_00000000000000000000000000"),
    Case("other tenant's batch results", 404, "not_found", method="GET", path="{batch_id}/results", auth="b"),
]


def corpus_context(client: Any, bucket: Any) -> dict[str, Any]:
    """Tenant A's objects the cases refer to (``{job_id}``, ``{bad_manifest}``, …), made through
    ``client`` (tenant A's) and ``bucket``; the fault suite's hostile requests use them too."""
    lines = [json.dumps(job(custom_id=f"r{i}")) for i in range(1, 30)]
    lines[16] = json.dumps({"media": [{"type": "image", "url": "gopher://x/y"}], "custom_id": "r17"})
    dup = [json.dumps(job(custom_id="x")), json.dumps(job(custom_id="y")), json.dumps(job(custom_id="x"))]
    job_id = client.post("/v1/jobs", json=job()).json()["id"]
    finished = client.post("/v1/jobs", json=job()).json()["id"]
    client.post(f"/v1/jobs/{finished}/cancel")
    batch_id = client.post("/v1/batches", json={"jobs": [job()]}).json()["id"]
    return {
        "job_id": f"/v1/jobs/{job_id}", "finished_job_id": f"/v1/jobs/{finished}",
        "batch_id": f"/v1/batches/{batch_id}", "bucket": bucket.bucket, "png": helpers.png_bytes(),
        "bad_manifest": bucket.put("manifests/corpus-bad.jsonl", "\n".join(lines).encode()),
        "dup_manifest": bucket.put("manifests/corpus-dup.jsonl", "\n".join(dup).encode()),
    }


@pytest.fixture(scope="module")
def ctx(server, tenant_a, s3_bucket):  # type: ignore[no-untyped-def]
    with helpers.client(server.base_url, tenant_a.api_key) as c:
        return corpus_context(c, s3_bucket)


def _headers(case: Case, a_key: str, b_key: str) -> dict[str, str]:
    auth = {"a": f"Bearer {a_key}", "b": f"Bearer {b_key}", "bad": "Bearer cq_key_deadbeef_nope",
            "basic": "Basic dXNlcjpwYXNz", "none": None}[case.auth]
    headers = {"authorization": auth} if auth else {}
    return {**headers, **case.headers}


def test_corpus_is_big_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request(case: Case, ctx, server, tenant_a, tenant_b):  # type: ignore[no-untyped-def]
    path = case.path
    if path.startswith("{"):
        key, _, rest = path[1:].partition("}")
        path = ctx[key] + rest
    body = case.body(ctx) if callable(case.body) else case.body
    headers = _headers(case, tenant_a.api_key, tenant_b.api_key)
    kwargs: dict[str, Any] = {"params": case.params, "headers": headers}
    if case.raw == b"chunked":
        def gen():  # type: ignore[no-untyped-def]
            yield b'{"metadata": {"x": "'
            for _ in range(40):
                yield b"y" * 65536
            yield b'"}}'
        kwargs["content"] = gen()
    elif case.raw is not None:
        kwargs["content"] = case.raw
    elif body is not None:
        kwargs["json"] = body
    with helpers.client(server.base_url, None) as c:
        r = c.request(case.method, path, **kwargs)
    assert r.status_code < 500, r.text[:500]
    problem = problem_of(r)
    assert (r.status_code, problem["code"]) == (case.status, case.code), problem
    if r.status_code == 422:
        assert problem["errors"], problem
        assert all({"loc", "msg"} <= set(e) for e in problem["errors"])
        if case.loc is not None:
            assert case.loc in [e["loc"] for e in problem["errors"]], problem["errors"]
