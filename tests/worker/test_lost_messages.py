"""Jobs whose broker message or worker is gone, under real worker processes (Redis, PostgreSQL,
the tiny checkpoint). The time limits stay at their defaults (900 s), so only the recovery these
tests are about can finish the jobs in time:

- a queued job whose message was deleted from Redis (a broker restarted without persistence, a
  message popped by a worker that died before claiming it) is sent again by the sweeper;
- a GPU worker killed with SIGKILL mid-job: its heartbeat stops, the sweeper requeues the job
  within seconds, another worker finishes it, once, on its second attempt.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
import redis

from tests.worker.stack import Stack, build_stack, destroy_stack

pytestmark = [pytest.mark.services, pytest.mark.slow]

FAST = {"sweep_interval_seconds": 1.0, "queued_resend_seconds": 2.0, "heartbeat_seconds": 0.5,
        "worker_dead_seconds": 3.0}
WORK = {"max_new_tokens": 400, "do_sample": False}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = build_stack(tmp_path_factory.mktemp("lost-messages"), **FAST)
    try:
        yield st
    finally:
        destroy_stack(st)


def delete_gpu_queue(stack: Stack) -> int:
    r = redis.Redis.from_url(stack.settings.effective_broker_url)
    keys = [k for k in r.keys("gpu*")]  # every priority level of the gpu queue
    return int(r.delete(*keys)) if keys else 0


def test_a_queued_job_whose_message_was_deleted_runs(stack: Stack) -> None:
    job = stack.submit({"prompts": ["Hello"], "generation": {"max_new_tokens": 4}})
    time.sleep(0.5)  # published after the response
    assert delete_gpu_queue(stack) >= 1  # no worker yet: the message was waiting there
    t0 = time.monotonic()
    stack.start_worker(queues="gpu,io", beat=True)
    done = stack.wait(job["id"], timeout=60)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["attempts"] == 1
    assert time.monotonic() - t0 < 60
    assert "re-sent the caption message of" in stack.logs(tail=200_000)


def test_a_sigkilled_worker_is_noticed_by_its_heartbeat(stack: Stack) -> None:
    if not any(w.alive() for w in stack.workers):
        stack.start_worker(queues="gpu,io", beat=True)
    spare = stack.start_worker(queues="gpu")  # takes over the job
    from core.db import Database
    from jobs.tables import Job

    sweeper_moved = False
    for _ in range(3):  # a job that ends while the sweeper moves is replaced; the next is killed at once
        job = stack.submit({"prompts": ["Hello, who are you?"], "generation": WORK})
        seen = stack.wait_for(job["id"], lambda j: j["status"] == "running" and j["partial_text"], every=0.02)
        assert seen["attempts"] == 1, seen
        db = Database(stack.settings)
        try:
            with db.session() as s:
                worker_id = s.get(Job, job["id"]).worker_id  # type: ignore[union-attr]
        finally:
            db.dispose()
        assert worker_id is not None
        pid = int(worker_id.split(":")[1])
        victim = next(w for w in stack.workers if w.proc.pid == pid)
        if victim is stack.workers[0] and not sweeper_moved:  # the sweeper lives there: a fresh io worker
            stack.start_worker(queues="io", beat=True)
            sweeper_moved = True
        if stack.get(job["id"])["status"] == "running":
            break
    assert stack.get(job["id"])["status"] == "running"
    t_kill = time.monotonic()
    stack.stop_worker(victim, signal.SIGKILL)
    done = stack.wait(job["id"], timeout=60)
    took = time.monotonic() - t_kill
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["attempts"] == 2 and len(done["output"]["text"]) > 0
    assert took < 30, took
    assert spare.alive() or victim is spare
    time.sleep(1.0)
    assert stack.get(job["id"])["status"] == "succeeded"

