"""Batcher: futures from many threads, batch formation under limits, OOM halving, cancel, close."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from models.batcher import Batcher
from models.engine import ChatRequest, ChatResult, Engine, Prepared
from models.errors import ContextTooLong, EngineError, InvalidInput, OutOfMemory
from models.generation import GenerationParams


@pytest.fixture(scope="module")
def engine(kit_dir: Path) -> Engine:
    return Engine.load(kit_dir / "models" / "internvl2-qwen2", device="cpu", dtype="float32")


def _reqs(n: int) -> list[ChatRequest]:
    words = ["cat", "dog", "bird", "fish", "tree", "house", "car", "moon"]
    return [ChatRequest(f"Tell me about the {words[i % 8]} number {i}.",
                        params=GenerationParams(max_new_tokens=4 + i % 5)) for i in range(n)]


class _Recording(Engine):
    """The real engine, recording each batch size (and failing large ones where asked)."""

    sizes: list[int]
    oom_above: int | None

    def generate_batch(self, requests: Sequence[ChatRequest | Prepared]) -> list[ChatResult]:
        self.sizes.append(len(requests))
        if self.oom_above is not None and len(requests) > self.oom_above:
            raise OutOfMemory(f"simulated: batch of {len(requests)}")
        return super().generate_batch(requests)


def _recording(engine: Engine, oom_above: int | None = None) -> _Recording:
    rec = copy.copy(engine)
    rec.__class__ = _Recording
    assert isinstance(rec, _Recording)
    rec.sizes, rec.oom_above = [], oom_above
    return rec


def test_concurrent_submissions_are_batched_and_exact(engine: Engine) -> None:
    reqs = _reqs(12)
    expected = [engine.generate_batch([r])[0].output_ids for r in reqs]
    rec = _recording(engine)
    with Batcher(rec, max_requests=8, wait_ms=200) as batcher, ThreadPoolExecutor(6) as pool:
        futures = list(pool.map(batcher.submit, reqs))
        results = [f.result(timeout=60) for f in futures]
    assert [r.output_ids for r in results] == expected
    assert batcher.stats.requests == 12 and max(rec.sizes) > 1 and max(rec.sizes) <= 8


def test_token_budget_limits_batch_size(engine: Engine) -> None:
    reqs = _reqs(4)
    cost = max(engine.prepare(r).prompt_tokens for r in reqs) + 8
    rec = _recording(engine)
    with Batcher(rec, max_requests=16, max_tokens=cost, wait_ms=200) as batcher:
        futures = [batcher.submit(r) for r in reqs]
        assert all(f.result(timeout=60).output_tokens > 0 for f in futures)
    assert rec.sizes and max(rec.sizes) == 1


def test_out_of_memory_splits_in_halves(engine: Engine) -> None:
    reqs = _reqs(8)
    expected = [engine.generate_batch([r])[0].output_ids for r in reqs]
    rec = _recording(engine, oom_above=2)
    batcher = Batcher(rec, max_requests=8, wait_ms=0, start=False)
    futures = [batcher.submit(r) for r in reqs]
    batcher.start()  # everything queued first: one batch of 8, then halves
    try:
        assert [f.result(timeout=60).output_ids for f in futures] == expected
    finally:
        batcher.close()
    assert rec.sizes[0] == 8 and batcher.stats.oom_splits >= 3 and max(rec.sizes[1:]) <= 4


def test_single_request_oom_fails_only_that_future(engine: Engine) -> None:
    rec = _recording(engine, oom_above=0)
    with Batcher(rec, wait_ms=0) as batcher:
        fut = batcher.submit(_reqs(1)[0])
        with pytest.raises(OutOfMemory):
            fut.result(timeout=60)


def test_invalid_requests_fail_at_submit(engine: Engine) -> None:
    with Batcher(engine, wait_ms=0) as batcher:
        bad = batcher.submit(ChatRequest("x", params=GenerationParams(max_new_tokens=10**6 - 1)))
        assert bad.done() and isinstance(bad.exception(), ContextTooLong)
        bad2 = batcher.submit(ChatRequest("<IMG_CONTEXT>"))
        assert bad2.done() and isinstance(bad2.exception(), InvalidInput)
        good = batcher.submit(_reqs(1)[0])
        assert good.result(timeout=60).finish_reason == "length"


def test_canceled_before_start_costs_nothing(engine: Engine) -> None:
    rec = _recording(engine)
    with Batcher(rec, wait_ms=0) as batcher:
        req = _reqs(1)[0]
        req.should_cancel = lambda: True
        res = batcher.submit(req).result(timeout=60)
    assert res.finish_reason == "canceled" and res.output_ids == [] and rec.sizes == []


def test_different_batch_keys_never_share_a_batch(engine: Engine) -> None:
    class _Keyed(_Recording):
        def batch_key(self, p: Prepared) -> Hashable:
            return len(p.request.question) % 2

    rec = _recording(engine)
    rec.__class__ = _Keyed
    seen: list[set[int]] = []
    lock = threading.Lock()
    orig = Engine.generate_batch

    def spy(self: Engine, requests: Sequence[ChatRequest | Prepared]) -> list[ChatResult]:
        with lock:
            seen.append({len(p.request.question) % 2 for p in requests if isinstance(p, Prepared)})
        return orig(self, requests)

    reqs = _reqs(6)
    batcher = Batcher(rec, max_requests=8, wait_ms=0, start=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "generate_batch", spy)
        futures = [batcher.submit(r) for r in reqs]
        batcher.start()
        for f in futures:
            f.result(timeout=60)
        batcher.close()
    assert seen and all(len(s) == 1 for s in seen)


def test_close_fails_pending_and_later_submits(engine: Engine) -> None:
    batcher = Batcher(engine, start=False)
    pending = batcher.submit(_reqs(1)[0])
    batcher.close()
    assert isinstance(pending.exception(timeout=5), EngineError)
    assert isinstance(batcher.submit(_reqs(1)[0]).exception(timeout=5), EngineError)


class _Gated(_Recording):
    """The real engine whose first batch holds until ``release`` is set, recording when each
    batch started: requests submitted meanwhile arrive while a batch runs."""

    started: list[float]
    running: threading.Event
    release: threading.Event

    def generate_batch(self, requests: Sequence[ChatRequest | Prepared]) -> list[ChatResult]:
        self.started.append(time.monotonic())
        if len(self.started) == 1:
            self.running.set()
            assert self.release.wait(60)
        return super().generate_batch(requests)


def _gated(engine: Engine) -> _Gated:
    rec = _recording(engine)
    rec.__class__ = _Gated
    assert isinstance(rec, _Gated)
    rec.started, rec.running, rec.release = [], threading.Event(), threading.Event()
    return rec


def test_lone_request_on_idle_engine_does_not_wait(engine: Engine) -> None:
    # wait_ms is far longer than the test may take: a lone request must not wait for company.
    rec = _gated(engine)
    rec.release.set()
    with Batcher(rec, max_requests=16, wait_ms=60_000) as batcher:
        for req in _reqs(3):  # one after another, each reaching an idle engine
            submitted = time.monotonic()
            assert batcher.submit(req).result(timeout=30).output_tokens > 0
            assert rec.started[-1] - submitted < 5.0
    assert rec.sizes == [1, 1, 1]


def test_requests_arriving_during_a_batch_join_the_next_one(engine: Engine) -> None:
    reqs = _reqs(4)
    expected = [engine.generate_batch([r])[0].output_ids for r in reqs]
    rec = _gated(engine)
    with Batcher(rec, max_requests=16, wait_ms=0) as batcher:
        first = batcher.submit(reqs[0])
        assert rec.running.wait(30)  # the idle engine took it alone, at once
        rest = [batcher.submit(r) for r in reqs[1:]]  # arrive while that batch runs
        rec.release.set()
        results = [f.result(timeout=60) for f in [first, *rest]]
    assert rec.sizes == [1, 3]
    assert [r.output_ids for r in results] == expected


def test_under_load_wait_fills_the_next_batch(engine: Engine) -> None:
    # Requests were waiting when the running batch ended: the engine waits (up to wait_ms) for
    # more, and stops waiting as soon as the batch is full.
    reqs = _reqs(4)
    rec = _gated(engine)
    with Batcher(rec, max_requests=3, wait_ms=60_000) as batcher:
        first = batcher.submit(reqs[0])
        assert rec.running.wait(30)
        waiting = [batcher.submit(r) for r in reqs[1:3]]
        rec.release.set()
        first.result(timeout=60)
        time.sleep(0.3)  # the engine is now waiting for a third companion
        assert len(rec.sizes) == 1
        late = batcher.submit(reqs[3])
        assert all(f.result(timeout=30).output_tokens > 0 for f in [*waiting, late])
    assert rec.sizes == [1, 3]


def test_a_loading_batcher_loads_on_its_engine_thread(engine: Engine) -> None:
    threads: list[threading.Thread] = []
    gate = threading.Event()

    def load() -> Engine:
        threads.append(threading.current_thread())
        gate.wait(10)
        return engine

    batcher = Batcher.loading(load, wait_ms=0)
    try:
        with ThreadPoolExecutor(1) as pool:  # a submit during the load waits for it
            early = pool.submit(batcher.submit, _reqs(1)[0])
            time.sleep(0.1)
            assert not early.done()
            gate.set()
            assert early.result(timeout=60).result(timeout=60).finish_reason == "length"
        assert batcher.engine is engine
        assert threads == [batcher._thread] and threads[0] is not threading.current_thread()
    finally:
        batcher.close()


def test_a_failed_load_reaches_the_caller_and_every_submit() -> None:
    def load() -> Engine:
        raise FileNotFoundError("no checkpoint at /nowhere")

    batcher = Batcher.loading(load)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _ = batcher.engine
    fut = batcher.submit(_reqs(1)[0])
    with pytest.raises(EngineError, match="failed to load: no checkpoint"):
        fut.result(timeout=5)
    batcher._thread.join(5)
    assert not batcher._thread.is_alive()
    batcher.close()


def test_an_engine_or_a_load_function_not_both(engine: Engine) -> None:
    with pytest.raises(ValueError):
        Batcher(engine, load=lambda: engine)
    with pytest.raises(ValueError):
        Batcher(None)
