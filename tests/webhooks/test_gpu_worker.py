"""Webhooks do not delay job processing in a worker that runs caption jobs too.

A real ``captionq worker --queues gpu,io`` (the default, and what local mode runs) on the tiny
InternLM2 checkpoint: jobs run through the real pipeline while a receiver that hangs past the
attempt timeout has two hundred messages waiting.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.db import Database
from jobs.outbox import webhook_message
from jobs.queue import Publisher
from jobs.requests import RequestLimits, normalize_job_request
from jobs.service import JobService

from .conftest import TenantInfo, add_message, create_tenant, make_settings
from .receiver import Answer, Receiver
from .stack import WorkerProcess, start_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

TINY = Path(__file__).resolve().parents[1] / "data" / "conformance" / "models" / "internvl2-internlm2"


class _Urls:
    """The API's URL checks are not under test here; requests come pre-normalised."""

    def webhook(self, url: str) -> str:
        return url

    def media(self, url: str, kind: str) -> str:
        return url

    def manifest(self, url: str) -> str:
        return url

    def output(self, url: str) -> str:
        return url


@dataclass
class Gpu:
    db: Database
    service: JobService
    worker: WorkerProcess
    tenant: TenantInfo


@pytest.fixture(scope="module")
def gpu(migrated_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpu]:
    tmp = tmp_path_factory.mktemp("webhooks-gpu")
    settings = make_settings(migrated_url, broker_url=redis_url, data_dir=tmp / "data",
                             webhook_timeout_seconds=4.0, webhook_retry_schedule="30",
                             model=str(TINY), device="cpu")
    db = Database(settings)
    service = JobService(db, settings, Publisher.from_settings(settings))
    worker = start_worker(settings, tmp / "worker.log", queues="gpu,io", beat=False, concurrency=None,
                          timeout=180, CAPTIONQ_MODEL=str(TINY), CAPTIONQ_DEVICE="cpu")
    try:
        yield Gpu(db, service, worker, create_tenant(db))
    finally:
        worker.stop()
        if service.publisher is not None:
            service.publisher.close()
        db.dispose()


def run_jobs(g: Gpu, n: int, webhook_url: str | None = None) -> tuple[float, list[str]]:
    t0 = time.monotonic()
    ids = []
    for i in range(n):
        body: dict[str, object] = {"prompts": [f"hello {i}"], "generation": {"max_new_tokens": 8}}
        if webhook_url:
            body["webhook"] = {"url": webhook_url}
        ids.append(g.service.submit(g.tenant.id, normalize_job_request(body, _Urls(), RequestLimits())).id)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        statuses = [g.service.get(g.tenant.id, j).status for j in ids]
        if all(s in ("succeeded", "failed", "canceled") for s in statuses):
            assert statuses == ["succeeded"] * n, (statuses, g.worker.log()[-3000:])
            return time.monotonic() - t0, ids
        time.sleep(0.05)
    raise AssertionError(f"jobs did not finish:\n{g.worker.log()[-3000:]}")


def test_webhooks_are_delivered_from_a_gpu_worker(gpu: Gpu) -> None:
    with Receiver([gpu.tenant.secret]) as rx:
        _, jobs = run_jobs(gpu, 3, rx.url)
        assert rx.wait_for(lambda r: len(r.received) == 3, 20), gpu.worker.log()[-3000:]
    assert {r.payload["data"]["id"] for r in rx.received} == set(jobs)
    assert all(r.verified_with == [0] and r.payload["type"] == "job.succeeded" for r in rx.received)


def test_hanging_receivers_do_not_delay_jobs(gpu: Gpu) -> None:
    baseline, _ = run_jobs(gpu, 4)
    with Receiver([gpu.tenant.secret], default=Answer(200, delay=6.0)) as rx:
        ids = [add_message(gpu.db, gpu.tenant.id, rx.url) for _ in range(200)]
        assert gpu.service.publisher is not None
        gpu.service.publisher.send_many([webhook_message(i) for i in ids])
        time.sleep(1.0)  # the first attempts are hanging now
        loaded, _ = run_jobs(gpu, 4)
    print(f"4 jobs: {baseline:.2f} s alone, {loaded:.2f} s behind 200 hanging webhooks")
    # Without the send pool this took 4.0 s (every task thread hung on a receiver until the timeout).
    assert loaded < max(1.5, 3 * baseline), (loaded, baseline)
