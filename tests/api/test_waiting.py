"""``POST /v1/jobs`` with ``Prefer: wait=N`` (submit and get the finished job in one request) and
the live-event path of ``GET /v1/jobs/{id}?wait=N``, over real HTTP, PostgreSQL and Redis. A
thread plays the worker: it claims and finishes the job through the job service and announces
it on Redis as the worker does."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from api.waiting import prefer_wait
from jobs.live import LivePublisher
from jobs.render import job_to_dict
from tests.api import helpers
from tests.api.helpers import problem_of

IMAGE = {"type": "image", "url": "s3://bucket-a/photo.jpg"}
OUTPUT = {"text": "A red square.", "rounds": [{"prompt": "p", "text": "A red square."}]}
METRICS = {"tiles": 1, "frames": 0, "input_tokens": 300, "output_tokens": 5, "model": "tiny"}


@pytest.mark.parametrize(("header", "seconds"), [
    (None, None), ("", None), ("respond-async", None), ("wait=10", 10.0), ("WAIT = 2.5", 2.5),
    ("respond-async, wait=5", 5.0), ('wait="7"', 7.0), ("wait=600", 60.0), ("wait=-3", 0.0),
    ("wait=soon", None), ("wait=nan", None), ("handling=lenient; wait=4", 4.0),
])
def test_prefer_wait_header(header: str | None, seconds: float | None) -> None:
    assert prefer_wait(header) == seconds


def _finish_later(api_settings: Any, delay: float, *, announce: bool) -> tuple[threading.Thread, list[str]]:
    """Start a thread that waits for the newest queued job id in ``ids`` and finishes it."""
    ids: list[str] = []

    def run() -> None:
        svc = helpers.service(api_settings)
        live = LivePublisher(api_settings.events_redis_url or "")
        try:
            deadline = time.monotonic() + 10
            while not ids and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
            claimed = svc.start(ids[0])
            assert claimed is not None
            job = svc.succeed_job(ids[0], OUTPUT, METRICS, claim=claimed)
            assert job is not None
            if announce:
                live.done(ids[0], "succeeded", job_to_dict(job))
        finally:
            live.close()
            svc.db.dispose()

    t = threading.Thread(target=run)
    t.start()
    return t, ids


def test_prefer_wait_answers_with_the_finished_job(api, api_settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The job's id is made before the POST reaches the database; learn it from the service.
    from jobs.service import JobService

    t, ids = _finish_later(api_settings, 0.3, announce=True)
    real = JobService.submit

    def submit(self: JobService, tenant_id: str, request: dict[str, Any], **kwargs: Any) -> Any:
        job = real(self, tenant_id, request, **kwargs)
        ids.append(job.id)
        return job

    monkeypatch.setattr(JobService, "submit", submit)
    t0 = time.monotonic()
    r = api.post("/v1/jobs", json={"media": [IMAGE]}, headers={"Prefer": "wait=30"})
    elapsed = time.monotonic() - t0
    t.join()
    assert r.status_code == 202 and r.headers["preference-applied"] == "wait=30"
    job = r.json()
    assert job["id"] == ids[0] and job["status"] == "succeeded"
    assert job["output"]["text"] == "A red square." and job["attempts"] == 1
    # From the live event, not the once-a-second database check.
    assert elapsed < 0.9, elapsed
    assert api.get(f"/v1/jobs/{job['id']}").json() == job


def test_prefer_wait_times_out_with_the_job_as_it_is(api) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    r = api.post("/v1/jobs", json={"media": [IMAGE]}, headers={"Prefer": "wait=0.6"})
    assert 0.5 <= time.monotonic() - t0 < 5
    assert r.status_code == 202 and r.json()["status"] == "queued"
    assert r.headers["preference-applied"] == "wait=0.6"


def test_prefer_wait_with_a_bad_body_is_still_a_problem(api) -> None:  # type: ignore[no-untyped-def]
    r = api.post("/v1/jobs", json={"media": "nope"}, headers={"Prefer": "wait=5"})
    assert r.status_code == 422 and problem_of(r)["code"]
    assert "preference-applied" not in r.headers


def test_prefer_wait_on_an_idempotent_replay(api) -> None:  # type: ignore[no-untyped-def]
    key = {"Idempotency-Key": f"wait-{time.time_ns()}"}
    first = api.post("/v1/jobs", json={"media": [IMAGE]}, headers=key)
    again = api.post("/v1/jobs", json={"media": [IMAGE]}, headers={**key, "Prefer": "wait=0.3"})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and again.headers["preference-applied"] == "wait=0.3"


def test_get_wait_ends_on_the_live_event(api, api_settings) -> None:  # type: ignore[no-untyped-def]
    job = api.post("/v1/jobs", json={"media": [IMAGE]}).json()
    t, ids = _finish_later(api_settings, 0.3, announce=True)
    ids.append(job["id"])
    t0 = time.monotonic()
    r = api.get(f"/v1/jobs/{job['id']}", params={"wait": 30})
    elapsed = time.monotonic() - t0
    t.join()
    assert r.json()["status"] == "succeeded" and elapsed < 0.9, elapsed


def test_get_wait_unannounced_end_is_found_in_the_database(api, api_settings) -> None:  # type: ignore[no-untyped-def]
    job = api.post("/v1/jobs", json={"media": [IMAGE]}).json()
    t, ids = _finish_later(api_settings, 0.2, announce=False)  # e.g. the sweeper's expiry
    ids.append(job["id"])
    r = api.get(f"/v1/jobs/{job['id']}", params={"wait": 30})
    t.join()
    assert r.json()["status"] == "succeeded"


def test_get_wait_for_another_tenants_job_is_404(api, api_b) -> None:  # type: ignore[no-untyped-def]
    job = api.post("/v1/jobs", json={"media": [IMAGE]}).json()
    r = api_b.get(f"/v1/jobs/{job['id']}", params={"wait": 5})
    assert r.status_code == 404 and problem_of(r)["code"] == "not_found"


def test_many_concurrent_waits_share_one_subscriber(api, api_settings, server, tenant_a) -> None:  # type: ignore[no-untyped-def]
    """Twelve waits on four jobs at once (three per job, so channels are shared and released in
    any order): each ends on its job's live event."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [api.post("/v1/jobs", json={"media": [IMAGE]}).json()["id"] for _ in range(4)]

    def wait(job_id: str) -> tuple[str, str, float]:
        with helpers.client(server.base_url, tenant_a.api_key) as c:
            t0 = time.monotonic()
            r = c.get(f"/v1/jobs/{job_id}", params={"wait": 30})
            return job_id, r.json()["status"], time.monotonic() - t0

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(wait, j) for j in jobs for _ in range(3)]
        time.sleep(0.5)  # every wait is subscribed by now
        threads = []
        for j in jobs:
            t, ids = _finish_later(api_settings, 0.0, announce=True)
            ids.append(j)
            threads.append(t)
        results = [f.result(timeout=30) for f in futures]
    for t in threads:
        t.join()
    assert sorted(j for j, _, _ in results) == sorted(jobs * 3)
    assert all(status == "succeeded" for _, status, _ in results), results
    assert max(elapsed for _, _, elapsed in results) < 5.0
