"""The engine process (worker.engine_client / worker.engine_host): what crosses between the worker
and the spawned engine keeps its meaning — errors their class and message, ``on_token`` deltas
their order, a cancel reaches the engine — and a dead engine process fails what was in flight.

The tiny random checkpoint serves the real-engine checks; the GIL benchmark's stand-in engine
(bench/bench_gil_proxy.py: steps of a known length, a token and a cancel check per step) serves
the ones that need a request to run for a while."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.bench_gil_proxy import make_proxy
from core.settings import Settings
from models.engine import ChatRequest, GenerationParams
from models.errors import CheckpointNotFound, ContextTooLong, EngineError, InvalidInput
from worker.engine_client import EngineProcess
from worker.runtime import Runtime


def _settings(tmp_path: Path, model: Path, batch_mode: str = "static") -> Settings:
    return Settings(model=str(model), device="cpu", dtype="float32", torch_threads=1, batch_mode=batch_mode,
                    database_url=f"sqlite:///{tmp_path}/captionq.db", data_dir=tmp_path / "data",
                    local_mode=True, engine_process=True, log_level="WARNING")


@pytest.fixture(scope="module")
def tiny_engine(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    with EngineProcess.start(_settings(tmp_path_factory.mktemp("engine"), tiny_qwen2)) as engine:
        _ = engine.engine  # loaded
        yield engine


@pytest.fixture()
def proxy_engine(tmp_path: Path) -> Iterator[tuple[EngineProcess, list[int | None]]]:
    """A stand-in engine whose steps take 20 ms; the list collects on_exit's exit codes."""
    exits: list[int | None] = []
    engine = EngineProcess.start(_settings(tmp_path, tmp_path), load=functools.partial(make_proxy, 10, 20.0),
                                 on_exit=exits.append)
    try:
        _ = engine.engine
        yield engine, exits
    finally:
        engine.close(timeout=10)


def test_answers_and_token_deltas_arrive_in_order(tiny_engine: EngineProcess) -> None:
    assert tiny_engine.engine.info.name == "internvl2-qwen2"
    deltas: list[str] = []
    pixel_values = torch.rand(1, 3, 448, 448)  # crosses in shared memory
    result = tiny_engine.submit(ChatRequest(question="<image>\nDescribe.", pixel_values=pixel_values,
                                            num_patches_list=[1], params=GenerationParams(max_new_tokens=12),
                                            on_token=deltas.append)).result(timeout=60)
    assert result.output_tokens >= 1 and result.prompt_tokens > 256  # the tile's tokens counted
    assert "".join(deltas) == result.text and len(deltas) >= 1
    assert tiny_engine.stats.requests >= 1 and tiny_engine.stats.tokens_generated >= result.output_tokens


@pytest.mark.parametrize(("params", "question", "cls", "match"), [
    (GenerationParams(max_new_tokens=0), "hi", InvalidInput, "max_new_tokens must be >= 1, got 0"),
    (GenerationParams(max_new_tokens=40_000), "hi", ContextTooLong, r"exceeds the model.s context of 32768"),
])
def test_errors_keep_their_class_and_message(tiny_engine: EngineProcess, params: GenerationParams,
                                             question: str, cls: type[EngineError], match: str) -> None:
    future = tiny_engine.submit(ChatRequest(question=question, params=params))
    with pytest.raises(cls, match=match) as info:
        future.result(timeout=60)
    assert type(info.value) is cls and info.value.code == cls.code


def test_a_model_that_does_not_load_raises_its_own_error(tmp_path: Path) -> None:
    engine = EngineProcess.start(_settings(tmp_path, tmp_path / "no-such-checkpoint"))
    try:
        with pytest.raises(CheckpointNotFound, match="no-such-checkpoint"):
            _ = engine.engine
        with pytest.raises(EngineError, match="failed to load"):
            engine.submit(ChatRequest(question="hi")).result(timeout=5)
    finally:
        engine.close(timeout=5)


def test_a_cancel_reaches_the_engine(proxy_engine: tuple[EngineProcess, list[int | None]]) -> None:
    engine, _ = proxy_engine
    first_token = threading.Event()
    request = ChatRequest(question="q", params=GenerationParams(max_new_tokens=500),
                          on_token=lambda delta: first_token.set(), should_cancel=first_token.is_set)
    result = engine.submit(request).result(timeout=30)
    # polled every 50 ms in the worker, seen by the engine at its next 20 ms step: far below 500
    assert result.finish_reason == "canceled" and 1 <= result.output_tokens < 50


def test_a_dead_engine_process_fails_what_is_in_flight(
        proxy_engine: tuple[EngineProcess, list[int | None]]) -> None:
    engine, exits = proxy_engine
    started = threading.Event()
    future = engine.submit(ChatRequest(question="q", params=GenerationParams(max_new_tokens=10_000),
                                       on_token=lambda delta: started.set()))
    assert started.wait(30)
    assert engine.pid is not None
    os.kill(engine.pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="exited unexpectedly"):
        future.result(timeout=10)
    assert time.monotonic() - t0 < 5 and exits == [-signal.SIGKILL]
    with pytest.raises(EngineError, match="shutting down"):
        engine.submit(ChatRequest(question="q")).result(timeout=5)


def test_the_runtime_reports_the_engine_process_stats(tiny_qwen2: Path, tmp_path: Path) -> None:
    rt = Runtime(_settings(tmp_path, tiny_qwen2, "continuous"))
    try:
        before = rt.engine_stats()  # no engine yet: the configured capacity, nothing counted
        assert before["slots"] == 16 and before["requests"] == before["tokens_generated"] == 0
        rt.load_model()
        assert rt.engine_info.name == "internvl2-qwen2" and rt.capacity()["engine_process"] is True
        request = ChatRequest(question="hi", params=GenerationParams(max_new_tokens=3))
        rt.batcher.submit(request).result(timeout=60)
        stats = rt.engine_stats()
        assert stats["requests"] == 1 and stats["batches"] == 1 and stats["slots"] == 16
        assert stats["tokens_generated"] == 3 and stats["decode_steps"] == 2  # token 1: the prefill
    finally:
        rt.close()
