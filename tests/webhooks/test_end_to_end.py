"""Webhooks end to end: jobs submitted through the real API, state changes made by the jobs
service (what the GPU worker calls), messages delivered by a real ``captionq worker --queues io
--beat`` process over Redis, to receivers on 127.0.0.1 that verify with ``standardwebhooks``.

Retry schedule ``0.2,0.5,1`` (four attempts over ~1.7 s), attempt timeout 1 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from core.db import Database
from core.settings import Settings
from jobs.queue import Publisher
from jobs.service import JobService
from jobs.tables import WebhookMessage

from .conftest import TenantInfo, add_message, create_tenant, make_settings
from .receiver import Answer, Receiver
from .stack import ApiServer, WorkerProcess, start_api, start_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]


@dataclass
class Stack:
    settings: Settings
    db: Database
    service: JobService
    api: ApiServer
    worker: WorkerProcess
    tenant: TenantInfo
    other: TenantInfo

    def client(self, tenant: TenantInfo | None = None) -> httpx.Client:
        return self.api.client((tenant or self.tenant).api_key)


@pytest.fixture(scope="module")
def stack(migrated_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("webhooks-e2e")
    settings = make_settings(migrated_url, broker_url=redis_url, data_dir=tmp / "data",
                             sweep_interval_seconds=0.5, outbox_grace_seconds=1.0)
    db = Database(settings)
    service = JobService(db, settings, Publisher.from_settings(settings))
    worker = start_worker(settings, tmp / "worker.log")
    api = start_api(settings)
    try:
        yield Stack(settings, db, service, api, worker, create_tenant(db), create_tenant(db))
    finally:
        api.stop()
        worker.stop()
        if service.publisher is not None:
            service.publisher.close()
        db.dispose()


def submit(stack: Stack, url: str, events: list[str], n: int = 1) -> list[str]:
    ids = []
    with stack.client() as c:
        for i in range(n):
            body = {"prompts": [f"hello {i}"], "webhook": {"url": url, "events": events}}
            r = c.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    return ids


def run_jobs(stack: Stack, job_ids: list[str]) -> list[float]:
    """What the GPU worker does to a job (claim, then succeed); returns each call's duration."""
    took = []
    for job_id in job_ids:
        t0 = time.monotonic()
        claimed = stack.service.start(job_id)
        assert claimed is not None
        assert stack.service.succeed(job_id, {"text": f"caption of {job_id}", "rounds": []},
                                     attempt=claimed.attempt)
        took.append(time.monotonic() - t0)
    return took


def deliveries(stack: Stack, job_id: str, tenant: TenantInfo | None = None) -> httpx.Response:
    with stack.client(tenant) as c:
        return c.get("/v1/webhook-deliveries", params={"job_id": job_id})


def _failed_once(stack: Stack, job_ids: list[str]) -> bool:
    """Whether each job's webhook message has a failed attempt recorded (not merely claimed)."""
    with stack.db.session() as session:
        failed = set(session.scalars(sa.select(WebhookMessage.job_id).where(
            WebhookMessage.job_id.in_(job_ids), WebhookMessage.last_error.is_not(None))))
    return failed == set(job_ids)


def wait_until(pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def test_every_message_arrives_and_verifies(stack: Stack) -> None:
    with Receiver([stack.tenant.secret]) as rx:
        jobs = submit(stack, rx.url, ["job.running", "job.succeeded"], n=10)
        run_jobs(stack, jobs)
        assert rx.wait_for(lambda r: len(set(r.ids())) == 20, 15), stack.worker.log()[-2000:]
        time.sleep(0.5)  # nothing more should come
    assert len(rx.received) == 20 and len(set(rx.ids())) == 20
    assert all(r.verified_with == [0] for r in rx.received)
    seen = {(r.payload["data"]["id"], r.payload["type"]) for r in rx.received}
    assert seen == {(j, t) for j in jobs for t in ("job.running", "job.succeeded")}
    done = [r.payload["data"] for r in rx.received if r.payload["type"] == "job.succeeded"]
    assert all(d["status"] == "succeeded" and d["output"]["text"].startswith("caption of") for d in done)


def test_500_twice_then_200_gets_three_attempts_one_id(stack: Stack) -> None:
    with Receiver([stack.tenant.secret], script=[Answer(500), Answer(500)]) as rx:
        (job,) = submit(stack, rx.url, ["job.succeeded"])
        run_jobs(stack, [job])
        assert rx.wait_for(lambda r: len(r.received) >= 3, 15)
        time.sleep(1.0)
    assert [r.answered for r in rx.received] == [500, 500, 200]
    assert len(set(rx.ids())) == 1 and all(r.verified_with == [0] for r in rx.received)
    r = deliveries(stack, job)
    assert r.status_code == 200, r.text
    (msg,) = r.json()["data"]
    assert msg["id"] == rx.ids()[0] and msg["status"] == "delivered" and msg["attempt_count"] == 3
    assert [a["status_code"] for a in msg["attempts"]] == [500, 500, 200]
    assert all(a["attempted_at"] and a["duration_ms"] is not None for a in msg["attempts"])
    assert msg["attempts"][0]["error"] == "HTTP 500"


def test_receiver_down_for_a_while_gets_everything_once_back(stack: Stack) -> None:
    rx = Receiver([stack.tenant.secret]).start()
    rx.stop()  # down; the port stays reserved for its return
    jobs = submit(stack, rx.url, ["job.succeeded"], n=8)
    # The jobs end together (one thread each) and the receiver is back as soon as every message
    # has failed once: the last of four attempts comes ~1.7 s after each event, so a fixed down
    # time, or events spread by a busy machine, could use up a message's attempts while down.
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda j: run_jobs(stack, [j]), jobs))
    assert wait_until(lambda: _failed_once(stack, jobs), 15)
    rx.start()
    try:
        assert rx.wait_for(lambda r: len(set(r.ids())) == 8, 15)
    finally:
        rx.stop()
    assert {r.payload["data"]["id"] for r in rx.received} == set(jobs)
    attempts = [deliveries(stack, j).json()["data"][0]["attempt_count"] for j in jobs]
    assert all(a >= 2 for a in attempts)  # each one failed at least once while the receiver was down


def test_slow_receiver_is_timed_out_and_retried(stack: Stack) -> None:
    with Receiver([stack.tenant.secret], script=[Answer(200, delay=2.5)]) as rx:
        (job,) = submit(stack, rx.url, ["job.succeeded"])
        run_jobs(stack, [job])
        assert wait_until(lambda: deliveries(stack, job).json()["data"][0]["status"] == "delivered", 15)
    (msg,) = deliveries(stack, job).json()["data"]
    first, *rest = msg["attempts"]
    assert first["status_code"] is None and first["error"].startswith("timeout")
    assert first["duration_ms"] < 1500
    assert rest[-1]["status_code"] == 200


def test_redirect_not_followed_then_redelivered(stack: Stack) -> None:
    with Receiver([stack.tenant.secret]) as target, Receiver([stack.tenant.secret]) as rx:
        rx.default = Answer(307, headers=(("Location", target.url),))
        (job,) = submit(stack, rx.url, ["job.succeeded"])
        run_jobs(stack, [job])
        assert wait_until(lambda: deliveries(stack, job).json()["data"][0]["status"] == "failed", 15)
        (msg,) = deliveries(stack, job).json()["data"]
        assert target.received == [] and len(rx.received) == 4
        assert {a["status_code"] for a in msg["attempts"]} == {307}
        assert "redirect not followed" in msg["attempts"][0]["error"]

        # The receiver is fixed; an operator asks for the message again.
        rx.default = Answer(200)
        with stack.client(stack.other) as c:
            assert c.post(f"/v1/webhook-deliveries/{msg['id']}/redeliver").status_code == 404
        with stack.client() as c:
            r = c.post(f"/v1/webhook-deliveries/{msg['id']}/redeliver")
        assert r.status_code == 202, r.text
        assert r.json()["id"] == msg["id"] and r.json()["status"] in ("pending", "delivered")
        assert wait_until(lambda: deliveries(stack, job).json()["data"][0]["status"] == "delivered", 10)
    assert rx.received[-1].answered == 200 and rx.received[-1].msg_id == msg["id"]
    assert rx.received[-1].body == rx.received[0].body
    assert len(deliveries(stack, job).json()["data"][0]["attempts"]) == 5


def test_tenant_scoping(stack: Stack) -> None:
    with Receiver([stack.tenant.secret]) as rx:
        (job,) = submit(stack, rx.url, ["job.succeeded"])
    assert deliveries(stack, job, stack.other).status_code == 404
    with stack.client(stack.other) as c:
        r = c.post("/v1/webhook-deliveries/msg_doesnotexist/redeliver")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "not_found"
    with httpx.Client(base_url=stack.api.base_url) as anon:
        assert anon.post("/v1/webhook-deliveries/msg_x/redeliver").status_code == 401


def test_lost_wakeup_is_picked_up_by_the_sweeper(stack: Stack) -> None:
    """A message whose wake-up never reached the broker (no outbox row sent) still goes out."""
    with Receiver([stack.tenant.secret]) as rx:
        msg_id = add_message(stack.db, stack.tenant.id, rx.url)  # row only, nothing published
        assert rx.wait_for(lambda r: r.ids() == [msg_id], 10), stack.worker.log()[-2000:]


def test_rotation_end_to_end(stack: Stack) -> None:
    from jobs.tenants import rotate_webhook_secret

    tenant = create_tenant(stack.db)
    with stack.db.session() as s:
        new = rotate_webhook_secret(s, tenant.id, 3600)
    with Receiver([tenant.secret]) as old_rx, Receiver([new]) as new_rx:
        for rx in (old_rx, new_rx):
            add_message(stack.db, tenant.id, rx.url)
        assert old_rx.wait_for(lambda r: len(r.received) == 1, 10)
        assert new_rx.wait_for(lambda r: len(r.received) == 1, 10)
    for rx in (old_rx, new_rx):
        assert len(rx.received[0].signature.split()) == 2 and rx.received[0].verified_with == [0]


def test_a_dead_receiver_does_not_delay_jobs(stack: Stack) -> None:
    """Receivers that hang until the timeout on every attempt: the job state changes (which write
    the messages) stay as fast as without webhooks, and the caption work is on another queue."""
    with Receiver([stack.tenant.secret]) as fast_rx:
        baseline = run_jobs(stack, submit(stack, fast_rx.url, ["job.running", "job.succeeded"], n=5))
    with Receiver([stack.tenant.secret], default=Answer(200, delay=3.0)) as slow_rx:
        t0 = time.monotonic()
        jobs = submit(stack, slow_rx.url, ["job.running", "job.succeeded"], n=10)
        took = run_jobs(stack, jobs)
        elapsed = time.monotonic() - t0
        # All ten jobs finished while the first webhook attempts were still hanging.
        assert elapsed < 3.0, elapsed
        assert max(took) < max(0.5, 5 * max(baseline)), (took, baseline)
        for j in jobs:
            with stack.client() as c:
                assert c.get(f"/v1/jobs/{j}").json()["status"] == "succeeded"
        assert slow_rx.wait_for(lambda r: len(r.received) >= 1, 10)

