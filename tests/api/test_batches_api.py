"""Batches over real HTTP: inline and S3 manifests, defaults, skip_invalid, counts, results,
cancel, finalisation and webhooks rows."""

from __future__ import annotations

import json
import time

import pytest

from tests.api.helpers import drain, problem_of, service

pytestmark = pytest.mark.services

IMAGE = {"type": "image", "url": "s3://bucket-a/photo.jpg"}


def _svc(settings):  # type: ignore[no-untyped-def]
    return service(settings)


def counts(**kw: int) -> dict[str, int]:
    return {k: kw.get(k, 0) for k in ("total", "queued", "running", "succeeded", "failed", "canceled")}


def _results(api, batch_id):  # type: ignore[no-untyped-def]
    r = api.get(f"/v1/batches/{batch_id}/results")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def test_inline_batch_defaults_counts_results_and_finish(api, api_settings):
    drain(api_settings)
    drain(api_settings, queue="io")
    body = {
        "jobs": [{"media": [IMAGE], "custom_id": f"row-{i}", "metadata": {"i": i}} for i in range(5)],
        "defaults": {"prompts": ["Caption this."], "generation": {"max_new_tokens": 64}, "priority": 3},
        "metadata": {"dataset": "d1"},
        "webhook": {"url": "https://hooks.example.com/b", "events": ["batch.completed", "job.failed"]},
    }
    r = api.post("/v1/batches", json=body)
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["id"].startswith("bat_") and batch["object"] == "batch" and batch["status"] == "queued"
    assert batch["counts"] == counts(total=5, queued=5)
    assert batch["metadata"] == {"dataset": "d1"} and batch["output_url"] is None
    assert batch["created_at"].endswith("Z") and batch["finished_at"] is None

    jobs = api.get("/v1/jobs", params={"batch_id": batch["id"], "limit": 10}).json()["data"]
    assert len(jobs) == 5
    req = jobs[0]["request"]
    assert req["prompts"] == ["Caption this."] and req["priority"] == 3
    assert req["generation"]["max_new_tokens"] == 64 and req["generation"]["top_k"] == 50
    msgs = drain(api_settings, expect=5)
    assert sorted(m["id"] for m in msgs) == sorted(j["id"] for j in jobs)

    lines = _results(api, batch["id"])
    assert [ln["custom_id"] for ln in lines] == [f"row-{i}" for i in range(5)]
    assert all(ln["status"] == "queued" and ln["metadata"]["i"] == i for i, ln in enumerate(lines))
    assert set(lines[0]) == {"job_id", "custom_id", "status", "output", "error", "metadata"}

    svc = _svc(api_settings)
    for i, line in enumerate(lines):
        c = svc.start(line["job_id"])
        assert c is not None
        if i == 0:
            assert api.get(f"/v1/batches/{batch['id']}").json()["status"] == "running"
        if i % 2:
            svc.fail(line["job_id"], "media_not_found", "no such object", attempt=c.attempt)
        else:
            svc.succeed(line["job_id"], {"text": f"t{i}", "rounds": []}, {}, attempt=c.attempt)
    done = api.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed" and done["finished_at"]
    assert done["counts"] == counts(total=5, succeeded=3, failed=2)
    lines = _results(api, batch["id"])
    assert [ln["status"] for ln in lines] == ["succeeded", "failed"] * 2 + ["succeeded"]
    assert lines[1]["error"] == {"code": "media_not_found", "message": "no such object", "retryable": False}
    assert lines[2]["output"]["text"] == "t2"

    deliveries = api.get("/v1/webhook-deliveries", params={"batch_id": batch["id"]}).json()["data"]
    assert sorted(d["type"] for d in deliveries) == ["batch.completed", "job.failed", "job.failed"]
    completed = next(d for d in deliveries if d["type"] == "batch.completed")
    assert completed["id"].startswith("msg_") and completed["status"] == "pending"
    assert completed["url"] == "https://hooks.example.com/b" and completed["attempts"] == []
    webhook_msgs = drain(api_settings, queue="io", expect=3)
    assert sorted(m["id"] for m in webhook_msgs) == sorted(d["id"] for d in deliveries)
    assert {m["task"] for m in webhook_msgs} == {"captionq.deliver_webhook"}
    svc.db.dispose()


def test_manifest_batch_streams_from_s3_and_finalizes_with_output_url(api, api_settings, s3_bucket):
    drain(api_settings)
    drain(api_settings, queue="io")
    lines = [json.dumps({"media": [IMAGE], "custom_id": f"m{i}"}) for i in range(250)]
    lines.insert(10, "")  # blank lines are skipped but still counted
    url = s3_bucket.put("manifests/ok.jsonl", ("\n".join(lines) + "\n").encode())
    out = f"s3://{s3_bucket.bucket}/results/run1/"
    r = api.post("/v1/batches", json={"manifest_url": url, "output_url": out,
                                      "defaults": {"prompts": ["Short caption."]}})
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["counts"]["total"] == 250 and batch["output_url"] == out
    assert len(drain(api_settings, expect=250)) == 250
    results = _results(api, batch["id"])
    assert [x["custom_id"] for x in results] == [f"m{i}" for i in range(250)]

    svc = _svc(api_settings)
    for x in results:
        c = svc.start(x["job_id"])
        assert c is not None and c["prompts"] == ["Short caption."]
        svc.succeed(x["job_id"], {"text": "ok", "rounds": []}, {}, attempt=c.attempt)
    # All ended, results not yet written: still running, a finalize message is waiting.
    b = api.get(f"/v1/batches/{batch['id']}").json()
    assert b["status"] == "running" and b["finished_at"] is None
    assert b["counts"]["succeeded"] == 250
    fin = drain(api_settings, queue="io", expect=1)
    assert [m["task"] for m in fin] == ["captionq.finalize_batch"] and fin[0]["args"] == [batch["id"]]
    # The finalize task: stream results in order, then mark finalized (idempotent).
    streamed = [x["job_id"] for x in svc.iter_batch_results(batch["id"], chunk=64)]
    assert streamed == [x["job_id"] for x in results]
    assert svc.mark_batch_finalized(batch["id"]) is True
    assert svc.mark_batch_finalized(batch["id"]) is False
    b = api.get(f"/v1/batches/{batch['id']}").json()
    assert b["status"] == "completed" and b["finished_at"]
    svc.db.dispose()


def test_manifest_errors_carry_line_numbers(api, s3_bucket):
    good = json.dumps({"media": [IMAGE]})
    bad = [good, good, "{not json", good, json.dumps({"media": [{"type": "image", "url": "ftp://x/y"}]}),
           json.dumps({"media": [IMAGE], "prompts": []})]
    url = s3_bucket.put("manifests/bad.jsonl", "\n".join(bad).encode())
    r = api.post("/v1/batches", json={"manifest_url": url})
    body = problem_of(r)
    assert r.status_code == 422
    locs = [e["loc"] for e in body["errors"]]
    assert ["manifest", 3] in locs
    assert ["manifest", 5, "media", 0, "url"] in locs
    assert ["manifest", 6, "prompts"] in locs
    assert api.get("/v1/batches").json()["data"] == [] or all(
        b["counts"]["total"] != 6 for b in api.get("/v1/batches").json()["data"])


def test_skip_invalid_makes_failed_jobs(api, s3_bucket):
    lines = [json.dumps({"media": [IMAGE], "custom_id": "a"}), "[1, 2",
             json.dumps({"media": [IMAGE], "custom_id": "b", "priority": 99})]
    url = s3_bucket.put("manifests/skip.jsonl", "\n".join(lines).encode())
    r = api.post("/v1/batches", json={"manifest_url": url, "skip_invalid": True})
    assert r.status_code == 202, r.text
    b = r.json()
    assert b["counts"] == counts(total=3, queued=1, failed=2)
    res = _results(api, b["id"])
    assert [x["status"] for x in res] == ["queued", "failed", "failed"]
    assert res[1]["error"]["code"] == "invalid_request" and res[1]["custom_id"] is None
    assert res[2]["error"]["code"] == "invalid_request" and "priority" in res[2]["error"]["message"]
    assert res[2]["custom_id"] == "b"


def test_all_invalid_with_skip_completes_at_once(api):
    r = api.post("/v1/batches", json={"jobs": [{"media": "x"}, {"nope": 1}], "skip_invalid": True})
    assert r.status_code == 202, r.text
    b = r.json()
    assert b["status"] == "completed" and b["counts"]["failed"] == 2 and b["finished_at"]


def test_cancel_batch(api, api_settings):
    svc = _svc(api_settings)
    r = api.post("/v1/batches", json={"jobs": [{"media": [IMAGE], "custom_id": str(i)} for i in range(6)],
                                      "webhook": {"url": "https://h.example.com/x",
                                                  "events": ["batch.completed", "job.canceled"]}})
    b = r.json()
    res = _results(api, b["id"])
    running = svc.start(res[0]["job_id"])
    assert running is not None
    c = svc.start(res[1]["job_id"])
    assert c is not None and svc.succeed(res[1]["job_id"], {"text": "x", "rounds": []}, {}, attempt=c.attempt)
    r = api.post(f"/v1/batches/{b['id']}/cancel")
    assert r.status_code == 202, r.text
    after = r.json()
    # Not "canceled" while a job still runs: the counts and the status agree.
    assert after["status"] == "running" and after["cancel_requested_at"]
    assert after["counts"] == counts(total=6, running=1, succeeded=1, canceled=4)
    assert after["finished_at"] is None
    assert svc.is_cancel_requested(res[0]["job_id"])
    assert svc.mark_canceled(res[0]["job_id"], attempt=running.attempt)
    final = api.get(f"/v1/batches/{b['id']}").json()
    assert final["status"] == "canceled" and final["finished_at"]
    assert final["counts"]["canceled"] == 5
    deliveries = api.get("/v1/webhook-deliveries", params={"batch_id": b["id"]}).json()["data"]
    types = [d["type"] for d in deliveries]
    assert sorted(types) == ["batch.completed"] + ["job.canceled"] * 5
    r = api.post(f"/v1/batches/{b['id']}/cancel")
    assert r.status_code == 409 and problem_of(r)["code"] == "batch_finished"
    svc.db.dispose()


def test_cancel_of_a_batch_with_nothing_running_answers_canceled(api):
    b = api.post("/v1/batches", json={"jobs": [{"media": [IMAGE]} for _ in range(3)]}).json()
    after = api.post(f"/v1/batches/{b['id']}/cancel").json()
    assert after["status"] == "canceled" and after["finished_at"]
    assert after["counts"] == counts(total=3, canceled=3)


def test_batch_list_isolation_and_idempotency(api, api_b):
    key = {"Idempotency-Key": f"b-{time.time_ns()}"}
    body = {"jobs": [{"media": [IMAGE]}]}
    first = api.post("/v1/batches", json=body, headers=key)
    again = api.post("/v1/batches", json=body, headers=key)
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]
    bid = first.json()["id"]
    listed = [b["id"] for b in api.get("/v1/batches", params={"limit": 1000}).json()["data"]]
    assert listed[0] == bid
    for method, path in (("GET", f"/v1/batches/{bid}"), ("GET", f"/v1/batches/{bid}/results"),
                         ("POST", f"/v1/batches/{bid}/cancel")):
        r = api_b.request(method, path)
        assert r.status_code == 404 and problem_of(r)["code"] == "not_found"
    r = api_b.get("/v1/webhook-deliveries", params={"batch_id": bid})
    assert r.status_code == 404
    assert bid not in [b["id"] for b in api_b.get("/v1/batches").json()["data"]]
