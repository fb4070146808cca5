"""The worker's model lives on the engine thread: Runtime.load_model has the batcher's own thread
load it (and set torch's threads there), so the thread that asked — Celery's main thread, which
lives on — never runs torch (models.batcher explains the ~2x this is worth on the CPU)."""

from __future__ import annotations

import dataclasses
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from models.batcher import BatcherStats
from models.engine import Engine
from worker.runtime import Runtime, apply_switch_interval


def _settings(tmp_path: Path, model: Path) -> Settings:
    return Settings(model=str(model), device="cpu", dtype="float32", torch_threads=1,
                    database_url=f"sqlite:///{tmp_path}/captionq.db", data_dir=tmp_path / "data",
                    local_mode=True, engine_process=False)


def test_the_model_loads_on_the_engine_thread(kit_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    loaded_on: list[threading.Thread] = []
    real_load = Engine.load.__func__  # type: ignore[attr-defined]

    def load(cls: type[Engine], *args: Any, **kwargs: Any) -> Engine:
        loaded_on.append(threading.current_thread())
        return real_load(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(Engine, "load", classmethod(load))
    rt = Runtime(_settings(tmp_path, kit_dir / "models" / "internvl2-qwen2"))
    try:
        engine = rt.load_model()
        assert rt.load_model() is engine and rt.batcher.engine is engine  # once
        assert loaded_on == [rt.batcher._thread] and loaded_on[0] is not threading.current_thread()
        assert rt.capacity()["torch_threads"] == 1
        # what the heartbeat stores: BatcherStats' fields, as the engine thread counts them
        stats = rt.engine_stats()
        assert list(stats) == [f.name for f in dataclasses.fields(BatcherStats)]
        assert stats["slots"] == rt.settings.batch_max_requests and stats["kv_budget_tokens"] == \
            rt.settings.batch_max_tokens
    finally:
        rt.close()


def test_a_model_that_fails_to_load_raises_in_the_caller(tmp_path: Path) -> None:
    rt = Runtime(_settings(tmp_path, tmp_path / "no-such-checkpoint"))
    try:
        with pytest.raises(Exception, match="no-such-checkpoint"):
            rt.load_model()
        assert not rt.model_loaded
    finally:
        rt.close()


@pytest.mark.parametrize(("device", "ms", "expected_ms"), [
    ("cuda:0", 0.2, 0.2), ("split", 0.5, 0.5), ("cpu", 0.2, None), ("cuda", 0.0, None)])
def test_a_gpu_worker_shortens_the_gil_switch_interval(tmp_path: Path, device: str, ms: float,
                                                       expected_ms: float | None) -> None:
    before = sys.getswitchinterval()
    settings = _settings(tmp_path, tmp_path).model_copy(update={"gil_switch_interval_ms": ms})
    try:
        got = apply_switch_interval(settings, device)
        assert got == sys.getswitchinterval()
        assert got == pytest.approx(expected_ms / 1000 if expected_ms is not None else before)
    finally:
        sys.setswitchinterval(before)
