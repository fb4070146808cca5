"""Continuous batching on a CUDA device (skipped without one): the decoding step replayed as a
CUDA graph gives the eager step's logits, and in float32 each request's tokens equal the same
request run alone through the static path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.continuous import ContinuousBatcher
from models.decode_step import DecodeStep
from models.engine import ChatRequest, Engine
from models.generation import GenerationParams
from models.slots import SlotKV

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine(kit_dir: Path) -> Engine:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return Engine.load(kit_dir / "models" / "internvl2-qwen2", device="cuda", dtype="float32")


def test_graph_replay_gives_the_eager_logits(engine: Engine) -> None:
    kv = SlotKV(engine.model.config.get_text_config(), slots=8, capacity=512, dtype=torch.float32,
                device="cuda")
    eager, graph = DecodeStep(engine.model, kv, graphs=False), DecodeStep(engine.model, kv, graphs=True)
    tokens, positions = [3, 4, 0, 5, 6], [10, 40, 0, 7, 300]
    want = eager(tokens, positions, longest=301).clone()
    got = graph(tokens, positions, longest=301).clone()
    again = graph([9, 9, 0, 9, 9], positions, longest=301).clone()  # a replay with new inputs
    assert graph.use_graphs and graph.captures == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(again[0], got[0])


def test_continuous_on_cuda_gives_the_tokens_of_each_request_alone(engine: Engine) -> None:
    pixels = torch.randn(3, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    reqs = [ChatRequest(f"Describe picture {i}.", pixel_values=pixels if i % 2 else None,
                        params=GenerationParams(max_new_tokens=4 + 3 * i)) for i in range(6)]
    expected = [engine.generate_batch([r])[0].output_ids for r in reqs]
    with ContinuousBatcher(engine, max_requests=4, max_tokens=4 * 1024) as batcher:
        got = [f.result(timeout=120).output_ids for f in [batcher.submit(r) for r in reqs]]
        assert batcher.step is not None and batcher.step.use_graphs and batcher.step.captures >= 1
    assert got == expected
