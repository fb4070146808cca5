"""POST/GET/list/cancel of jobs over real HTTP against PostgreSQL, Redis and the S3 server."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from core.db import Database
from tests.api import helpers
from tests.api.helpers import drain, problem_of

pytestmark = pytest.mark.services

IMAGE = {"type": "image", "url": "s3://bucket-a/photo.jpg"}


def test_submit_fills_defaults_and_enqueues_on_gpu(api, api_settings):
    drain(api_settings)
    body = {"media": [IMAGE, {"type": "video", "url": "s3://bucket-a/clip.mp4", "end": 12.5}],
            "custom_id": "row-00017", "metadata": {"dataset": "catalog-2026"}, "priority": 7}
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["id"].startswith("job_") and job["object"] == "job" and job["status"] == "queued"
    assert job["custom_id"] == "row-00017" and job["metadata"] == {"dataset": "catalog-2026"}
    req = job["request"]
    assert req["media"][0] == {"type": "image", "url": "s3://bucket-a/photo.jpg", "max_tiles": 12}
    assert req["media"][1] == {"type": "video", "url": "s3://bucket-a/clip.mp4", "num_frames": 8,
                               "start": 0.0, "end": 12.5, "max_tiles": 1}
    assert req["image_mode"] == "separate" and req["task"] == "chat"
    assert req["prompts"] == ["Describe the images and videos in detail."]
    assert req["generation"] == {"max_new_tokens": 512, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
                                 "top_k": 50, "repetition_penalty": 1.0, "seed": None,
                                 "response_format": None, "stop": None, "system_prompt": None,
                                 "logprobs": False, "top_logprobs": 0}
    assert req["ttl_seconds"] == api_settings.default_ttl_seconds and req["priority"] == 7
    for key in ("output", "partial_text", "error", "metrics", "started_at", "finished_at", "batch_id"):
        assert job[key] is None
    assert job["attempts"] == 0
    created = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
    assert created.tzinfo is not None and job["created_at"].endswith("Z")
    msgs = drain(api_settings, expect=1)
    assert [m["id"] for m in msgs] == [job["id"]]
    assert msgs[0]["task"] == "captionq.caption_job" and msgs[0]["args"] == [job["id"]]
    assert msgs[0]["routing_key"] == "gpu.default"  # the default model's queue
    assert msgs[0]["priority"] == 9 - 7  # kombu's Redis serves step 0 first


def test_default_prompts_by_media_kind(api):
    cases = [
        ([IMAGE], "Describe the image in detail."),
        ([IMAGE, IMAGE], "Describe the images in detail."),
        ([{"type": "video", "url": "s3://b-1/v.mp4"}], "Describe the video in detail."),
    ]
    for media, prompt in cases:
        r = api.post("/v1/jobs", json={"media": media})
        assert r.status_code == 202, r.text
        assert r.json()["request"]["prompts"] == [prompt]
    r = api.post("/v1/jobs", json={"prompts": ["Hello, who are you?"]})
    assert r.status_code == 202 and r.json()["request"]["media"] == []


def test_data_uri_and_webhook_are_accepted(api):
    uri = helpers.data_uri()
    r = api.post("/v1/jobs", json={"media": [{"type": "image", "url": uri}],
                                   "webhook": {"url": "https://hooks.example.com/captionq"}})
    assert r.status_code == 202, r.text
    req = r.json()["request"]
    assert req["media"][0]["url"].startswith("data:image/png;sha256=")  # shown short: tests below
    assert req["webhook"] == {"url": "https://hooks.example.com/captionq",
                              "events": ["job.succeeded", "job.failed", "job.canceled"]}


def test_priorities_are_served_highest_first(api, api_settings):
    drain(api_settings)
    low = api.post("/v1/jobs", json={"media": [IMAGE], "priority": 0}).json()["id"]
    high = api.post("/v1/jobs", json={"media": [IMAGE], "priority": 9}).json()["id"]
    mid = api.post("/v1/jobs", json={"media": [IMAGE], "priority": 4}).json()["id"]
    order = [m["id"] for m in drain(api_settings, expect=3)]
    assert order == [high, mid, low]


def test_get_and_tenant_isolation(api, api_b):
    job = api.post("/v1/jobs", json={"media": [IMAGE]}).json()
    assert api.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]
    for path, method in ((f"/v1/jobs/{job['id']}", "GET"), (f"/v1/jobs/{job['id']}/cancel", "POST")):
        r = api_b.request(method, path)
        assert r.status_code == 404 and problem_of(r)["code"] == "not_found"
    assert job["id"] not in [j["id"] for j in api_b.get("/v1/jobs").json()["data"]]


def test_auth_required(anon, server):
    r = anon.get("/v1/jobs")
    assert r.status_code == 401 and problem_of(r)["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    with helpers.client(server.base_url, "cq_key_0000_nope") as c:
        r = c.post("/v1/jobs", json={"media": [IMAGE]})
        assert r.status_code == 401 and problem_of(r)["code"] == "unauthorized"


def test_list_newest_first_with_cursor_and_filters(api_settings, server):
    key = helpers.new_tenant(api_settings, f"lister-{time.time_ns()}")
    with helpers.client(server.base_url, key.api_key) as c:
        ids = [c.post("/v1/jobs", json={"media": [IMAGE], "custom_id": f"c{i % 2}"}).json()["id"]
               for i in range(7)]
        seen, cursor = [], None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = c.get("/v1/jobs", params=params).json()
            assert len(page["data"]) <= 3
            seen += [j["id"] for j in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids))
        assert [j["id"] for j in c.get("/v1/jobs", params={"custom_id": "c1"}).json()["data"]] == \
            [ids[5], ids[3], ids[1]]
        c.post(f"/v1/jobs/{ids[0]}/cancel")
        canceled = c.get("/v1/jobs", params={"status": "canceled"}).json()["data"]
        assert [j["id"] for j in canceled] == [ids[0]]
        assert len(c.get("/v1/jobs", params={"status": "queued"}).json()["data"]) == 6
        first = c.get(f"/v1/jobs/{ids[3]}").json()["created_at"]
        after = c.get("/v1/jobs", params={"created_after": first}).json()["data"]
        assert [j["id"] for j in after] == [ids[6], ids[5], ids[4]]
        before = c.get("/v1/jobs", params={"created_before": first}).json()["data"]
        assert [j["id"] for j in before] == [ids[2], ids[1], ids[0]]
        future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        assert c.get("/v1/jobs", params={"created_after": future}).json() == {
            "object": "list", "data": [], "next_cursor": None}


def test_cancel_queued_running_and_finished(api, api_settings):
    job = api.post("/v1/jobs", json={"media": [IMAGE]}).json()
    r = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "canceled" and r.json()["finished_at"]
    r = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and problem_of(r)["code"] == "job_finished"
    assert problem_of(r)["detail"] == f"job {job['id']} was already canceled"

    # A running job: cancel is a request the worker honours at its next step.
    svc = helpers.service(api_settings)
    db = svc.db
    job = api.post("/v1/jobs", json={"media": [IMAGE]}).json()
    claimed = svc.start(job["id"])
    assert claimed is not None
    r = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    assert svc.is_cancel_requested(job["id"])
    assert svc.mark_canceled(job["id"], attempt=claimed.attempt)
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"
    db.dispose()


def test_wait_long_polls_until_terminal(api, api_settings):
    svc = helpers.service(api_settings)
    db = svc.db
    job = api.post("/v1/jobs", json={"media": [IMAGE]}).json()
    t0 = time.monotonic()
    r = api.get(f"/v1/jobs/{job['id']}", params={"wait": 1})
    assert r.json()["status"] == "queued" and 0.9 <= time.monotonic() - t0 < 5

    def finish() -> None:
        time.sleep(0.5)
        c = svc.start(job["id"])
        assert c is not None
        svc.set_partial_text(job["id"], "A red")
        output = {"text": "A red square.", "rounds": [{"prompt": "p", "text": "A red square."}]}
        metrics = {"tiles": 1, "frames": 0, "input_tokens": 300, "output_tokens": 5, "model": "tiny"}
        svc.succeed(job["id"], output, metrics, attempt=c.attempt)

    t = threading.Thread(target=finish)
    t0 = time.monotonic()
    t.start()
    r = api.get(f"/v1/jobs/{job['id']}", params={"wait": 30})
    t.join()
    elapsed = time.monotonic() - t0
    done = r.json()
    assert done["status"] == "succeeded" and elapsed < 10
    assert done["output"]["text"] == "A red square." and done["partial_text"] is None
    assert done["attempts"] == 1 and done["started_at"] and done["finished_at"]
    assert done["metrics"]["model"] == "tiny" and done["metrics"]["run_seconds"] >= 0
    assert "queued_seconds" in done["metrics"]
    db.dispose()


def test_idempotency_key(api, api_b):
    body = {"media": [IMAGE], "custom_id": "idem"}
    key = {"Idempotency-Key": f"k-{time.time_ns()}"}
    first = api.post("/v1/jobs", json=body, headers=key)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    again = api.post("/v1/jobs", json=body, headers=key)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = api.post("/v1/jobs", json={**body, "custom_id": "other"}, headers=key)
    assert other.status_code == 422 and problem_of(other)["code"] == "idempotency_key_reused"
    # Keys are per tenant.
    assert api_b.post("/v1/jobs", json=body, headers=key).status_code == 202
    # A failed request does not keep its key.
    bad_key = {"Idempotency-Key": f"bad-{time.time_ns()}"}
    assert api.post("/v1/jobs", json={"media": "nope"}, headers=bad_key).status_code == 422
    assert api.post("/v1/jobs", json=body, headers=bad_key).status_code == 202


def test_idempotency_in_flight_is_409(api, api_settings, tenant_a):
    from jobs import idempotency

    db = Database(api_settings)
    key = f"inflight-{time.time_ns()}"
    body = {"media": [IMAGE]}
    h = idempotency.request_hash("POST /v1/jobs", body)
    assert idempotency.claim(db, tenant_a.tenant_id, key, "POST /v1/jobs", h, 86400) is None
    r = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 409 and problem_of(r)["code"] == "idempotency_in_flight"
    db.dispose()


def test_health_ready_metrics_docs(anon, api, api_settings):
    assert anon.get("/healthz").json() == {"status": "ok"}
    ready = anon.get("/readyz")  # no GPU worker has a heartbeat yet: not ready
    assert ready.status_code == 503 and ready.headers["retry-after"]
    assert problem_of(ready)["checks"] == {"database": "ok", "broker": "ok", "workers": "none"}
    from core.db import Database
    from jobs import heartbeats

    db = Database(api_settings)
    heartbeats.beat(db, "readyz-test-worker")  # what a GPU worker writes every few seconds
    try:
        ready = anon.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "ok"}
    finally:
        heartbeats.forget(db, "readyz-test-worker")
        db.dispose()
    api.post("/v1/jobs", json={"media": [IMAGE]})
    text = anon.get("/metrics").text
    assert 'captionq_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    assert "captionq_http_request_duration_seconds_bucket" in text
    assert 'captionq_jobs{status="queued"}' in text
    assert anon.get("/docs").status_code == 200
    spec = anon.get("/openapi.json").json()
    assert "/v1/jobs" in spec["paths"] and "JobRequest" in spec["components"]["schemas"]


def test_readyz_reports_a_dead_broker(api_settings):
    dead = api_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{helpers.free_port()}/0"})
    srv = helpers.start_server(dead)
    try:
        with helpers.client(srv.base_url, None) as c:
            r = c.get("/readyz")
            body = problem_of(r)
            assert r.status_code == 503 and body["code"] == "unavailable"
            assert body["checks"] == {"database": "ok", "broker": "unavailable", "workers": "none"}
            assert "127.0.0.1" not in r.text and "Error" not in r.text  # no address, no driver error
    finally:
        srv.stop()


def test_data_uris_are_shown_short_and_stored_once(api, api_settings):
    import hashlib

    import sqlalchemy as sa

    from core.db import Database
    from jobs.tables import Job, WebhookMessage

    png = helpers.png_bytes((40, 30))
    uri = helpers.data_uri("image/png", png)
    short = f"data:image/png;sha256={hashlib.sha256(png).hexdigest()};bytes={len(png)}"
    job = api.post("/v1/jobs", json={"media": [{"type": "image", "url": uri}, IMAGE],
                                     "webhook": {"url": "https://hooks.example.com/captionq"}}).json()
    assert job["request"]["media"][0]["url"] == short
    assert job["request"]["media"][1]["url"] == IMAGE["url"]
    assert api.get(f"/v1/jobs/{job['id']}").json()["request"]["media"][0]["url"] == short
    listed = api.get("/v1/jobs", params={"limit": 5}).json()["data"]
    assert [j["request"]["media"][0]["url"] for j in listed if j["id"] == job["id"]] == [short]
    canceled = api.post(f"/v1/jobs/{job['id']}/cancel")  # a job.canceled webhook message is written
    assert canceled.status_code == 202 and uri not in canceled.text
    db = Database(api_settings)
    try:
        with db.session() as session:
            stored = session.scalar(sa.select(Job.request).where(Job.id == job["id"]))
            payloads = list(session.scalars(sa.select(WebhookMessage.payload)
                                            .where(WebhookMessage.job_id == job["id"])))
    finally:
        db.dispose()
    assert stored["media"][0]["url"] == uri  # the worker's copy is whole
    assert payloads and all(p["request"]["media"][0]["url"] == short for p in payloads)


def test_integral_numbers_are_integers(api):
    """JSON has one number type: 8.0 is the integer 8 (JSON Schema agrees); 8.5 is refused."""
    body = {"media": [{**IMAGE, "max_tiles": 6.0}], "priority": 8.0, "generation": {"max_new_tokens": 1e2}}
    job = api.post("/v1/jobs", json=body)
    assert job.status_code == 202, job.text
    req = job.json()["request"]
    assert (req["media"][0]["max_tiles"], req["priority"], req["generation"]["max_new_tokens"]) == (6, 8, 100)
    assert job.json()["priority"] == 8 and isinstance(job.json()["priority"], int)
    assert api.post("/v1/jobs", json={**body, "priority": 8.5}).status_code == 422
