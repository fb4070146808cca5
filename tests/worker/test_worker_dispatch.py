"""Bounded batch dispatch through the whole service: a batch larger than ``dispatch_window``
completes, with never more than about a window of its messages in the broker, because the worker
refills the window after each claim and its beat (the sweeper) on each sweep (real API,
PostgreSQL, Redis and a ``captionq worker --beat`` process)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.worker.stack import Stack, build_stack, destroy_stack

pytestmark = [pytest.mark.services, pytest.mark.slow]

WINDOW = 3
JOBS = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = build_stack(tmp_path_factory.mktemp("worker-dispatch"), dispatch_window=WINDOW,
                     sweep_interval_seconds=0.5)
    try:
        st.start_worker(queues="gpu,io", beat=True)
        yield st
    finally:
        destroy_stack(st)


def _gpu_messages(r: redis.Redis) -> int:
    return sum(int(r.llen(k)) for k in r.scan_iter("gpu*") if r.type(k) == b"list")


def test_batch_larger_than_the_window_completes_in_order(stack: Stack) -> None:
    r = redis.Redis.from_url(stack.settings.effective_broker_url)
    body = {
        "jobs": [{"prompts": [f"Say {i}."], "custom_id": f"row-{i}"} for i in range(JOBS)],
        "defaults": {"generation": {"max_new_tokens": 2, "do_sample": False}},
    }
    seen: list[int] = []
    with stack.client() as c:
        resp = c.post("/v1/batches", json=body)
        assert resp.status_code == 202, resp.text
        batch = stack.wait_batch(resp.json()["id"], timeout=180, every=0.05,
                                 on_poll=lambda: seen.append(_gpu_messages(r)))
        assert batch["status"] == "completed", (batch, stack.logs())
        lines = [ln for ln in c.get(f"/v1/batches/{batch['id']}/results").text.splitlines() if ln]
    assert batch["counts"]["succeeded"] == JOBS and len(lines) == JOBS
    # The first window went out at submission; the rest came from the refills (the worker takes
    # messages as fast as they come, so the queue itself is mostly seen empty).
    assert max(seen) <= WINDOW
