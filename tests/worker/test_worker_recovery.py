"""Workers that start late, die, or are stopped: real worker processes, real signals.

- a job whose TTL passed before any worker took it fails ``expired`` without running;
- a worker killed with SIGKILL in the middle of a job: the job is redelivered (here by the
  sweeper of a second worker, after ``job_hard_time_limit + stuck_grace_seconds``) and ends
  exactly once, on its second attempt;
- SIGTERM is a warm shutdown: the job in progress finishes before the process exits.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from core.db import Database
from jobs.tables import WebhookMessage
from tests.support.slow_http import slow_image
from tests.worker.stack import Stack, build_stack, destroy_stack

pytestmark = [pytest.mark.services, pytest.mark.slow]

# Small limits so that the sweeper recovers a lost job within seconds. A job here runs 1-4 s on an
# idle 2-core machine; the soft limit leaves room for a machine several times busier.
LIMITS = {"job_soft_time_limit": 24, "job_hard_time_limit": 25, "stuck_grace_seconds": 1.0,
          "sweep_interval_seconds": 1.0}
WORK = {"max_new_tokens": 400, "do_sample": False}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = build_stack(tmp_path_factory.mktemp("worker-recovery"), **LIMITS)
    try:
        yield st
    finally:
        destroy_stack(st)


def webhook_messages(stack: Stack, job_id: str) -> list[str]:
    db = Database(stack.settings)
    try:
        with db.session() as s:
            return list(s.scalars(sa.select(WebhookMessage.type).where(WebhookMessage.job_id == job_id)))
    finally:
        db.dispose()


def test_job_past_its_ttl_fails_expired_without_running(stack: Stack) -> None:
    job = stack.submit({"prompts": ["Hello"], "ttl_seconds": 1, "generation": {"max_new_tokens": 4}})
    time.sleep(1.5)  # no worker yet: the job waits in the queue past its TTL
    stack.start_worker(queues="gpu,io")
    done = stack.wait(job["id"], timeout=30)
    assert done["status"] == "failed", (done, stack.logs())
    assert done["error"]["code"] == "expired"
    assert done["attempts"] == 0 and done["started_at"] is None and done["output"] is None


def test_sigkill_mid_job_redelivers_and_ends_once(stack: Stack) -> None:
    first = stack.workers[-1]
    assert first.alive()
    job = stack.submit({"prompts": ["Hello, who are you?"], "generation": WORK,
                        "webhook": {"url": "http://127.0.0.1:9/hook"}})
    seen = stack.wait_for(job["id"], lambda j: j["status"] == "running" and j["partial_text"], every=0.02)
    assert seen["status"] == "running" and seen["attempts"] == 1, seen
    stack.stop_worker(first, signal.SIGKILL)
    time.sleep(0.5)
    orphan = stack.get(job["id"])
    assert orphan["status"] == "running" and orphan["attempts"] == 1  # left behind by the dead worker
    stack.start_worker(queues="gpu,io", beat=True)  # its sweeper finds the stuck job and requeues it
    done = stack.wait(job["id"], timeout=90)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["attempts"] == 2
    assert len(done["output"]["text"]) > 0
    time.sleep(1.5)  # any duplicate would have been recorded by now
    assert stack.get(job["id"])["status"] == "succeeded"
    assert webhook_messages(stack, job["id"]).count("job.succeeded") == 1
    assert "job.failed" not in webhook_messages(stack, job["id"])


def test_sigterm_is_a_warm_shutdown(stack: Stack) -> None:
    w = stack.workers[-1]
    assert w.alive()
    job = stack.submit({"prompts": ["Tell me something."], "generation": WORK})
    seen = stack.wait_for(job["id"], lambda j: j["status"] == "running" and j["partial_text"], every=0.02)
    assert seen["status"] == "running"
    code = stack.stop_worker(w, signal.SIGTERM, timeout=60)
    assert code == 0, w.text()[-3000:]
    done = stack.get(job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert "Warm shutdown" in w.text()


def test_soft_time_limit_fails_timeout(stack: Stack) -> None:
    w = stack.start_worker(queues="gpu", job_soft_time_limit=1)
    try:
        with slow_image(4.0) as url:
            job = stack.submit({"media": [{"type": "image", "url": url}], "prompts": ["Hello, who are you?"],
                                "generation": {"max_new_tokens": 1000}})
            done = stack.wait(job["id"], timeout=60)
        assert done["status"] == "failed", (done, stack.logs())
        assert done["error"]["code"] == "timeout"
        assert done["output"] is None and done["attempts"] == 1
    finally:
        stack.stop_worker(w)


def test_io_worker_runs_the_scheduler_without_a_model(stack: Stack) -> None:
    w = stack.start_worker(queues="io", beat=True)
    try:
        deadline = time.monotonic() + 30
        # beat's "Sending due task ... (captionq.sweep)" comes first; wait for the worker's receipt
        while "Task captionq.sweep[" not in w.text().split("ready.", 1)[-1] and time.monotonic() < deadline:
            time.sleep(0.2)
        log = w.text()
        assert "scheduler running: sweep every 1.0 s" in log
        assert "Task captionq.sweep[" in log.split("ready.", 1)[1]
        assert "gpu worker serving" not in log and "models.engine" not in log  # no model in an io worker
    finally:
        assert stack.stop_worker(w) == 0


def test_a_claim_lost_by_the_database_is_delivered_again(stack: Stack) -> None:
    """The claim commits without waiting for the WAL flush; if PostgreSQL crashed before the
    flush, the job would come back queued with the attempt count from before. The worker running
    it notices (it is no longer running) and has its message delivered again: the job runs once
    more and ends once."""
    if not any(w.alive() for w in stack.workers):
        stack.start_worker(queues="gpu,io")
    job = stack.submit({"prompts": ["Hello, who are you?"], "generation": WORK})
    seen = stack.wait_for(job["id"], lambda j: j["status"] == "running" and j["partial_text"], every=0.02)
    assert seen["status"] == "running" and seen["attempts"] == 1, seen
    db = Database(stack.settings)
    try:
        with db.session() as s:  # the state a crash recovery would leave behind
            s.execute(sa.text("UPDATE jobs SET status = 'queued', attempts = 0, started_at = NULL, "
                              "partial_text = NULL WHERE id = :id"), {"id": job["id"]})
    finally:
        db.dispose()
    done = stack.wait(job["id"], timeout=90)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["attempts"] == 1 and len(done["output"]["text"]) > 0
    assert "was lost by the database; delivering it again" in stack.logs(tail=200_000)
    time.sleep(1.0)
    assert stack.get(job["id"])["status"] == "succeeded"
