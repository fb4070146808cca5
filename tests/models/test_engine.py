"""Engine on the kit's tiny checkpoints: batched == one at a time, stops, streaming,
cancellation, token budget, input validation. One engine per variant for the module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.engine import ChatRequest, Engine
from models.errors import ContextTooLong, InvalidInput
from models.generation import GenerationParams

VARIANTS = ("internvl2-internlm2", "internvl2-qwen2")


@pytest.fixture(scope="module", params=VARIANTS)
def engine(request: pytest.FixtureRequest, kit_dir: Path) -> Engine:
    return Engine.load(kit_dir / "models" / request.param, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def pixels(kit_dir: Path) -> dict[str, torch.Tensor]:
    """Kit pixel inputs rebuilt from the stored uint8 tiles (float32 [tiles, 3, 448, 448])."""
    pre = json.loads((kit_dir / "preprocess" / "preprocess.json").read_text())
    mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
    tiles = np.load(kit_dir / "preprocess" / "tiles_u8.npz")
    out = {}
    for name, key in (("P1", "img04_448x448__grid1x1"), ("P1b", "img03_640x480__grid1x1"),
                      ("P3", "img11_672x448__grid2x1")):
        x = ((tiles[key].astype(np.float32) / np.float32(255)) - mean) / std
        out[name] = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return out


def _requests(px: dict[str, torch.Tensor]) -> list[ChatRequest]:
    """Independent requests with different images, tile counts, prompt lengths, rounds and
    generation settings."""
    greedy = GenerationParams(max_new_tokens=12)
    first_round_answer = "[495]�[940][654]"
    return [
        ChatRequest("Hello, who are you?", params=GenerationParams(max_new_tokens=7)),
        ChatRequest("<image>\nPlease describe the image shortly.", pixel_values=px["P1"], params=greedy),
        ChatRequest("Describe this picture.", pixel_values=px["P3"],
                    params=GenerationParams(max_new_tokens=15)),
        ChatRequest("Image-1: <image>\nImage-2: <image>\nWhat differs?",
                    pixel_values=torch.cat([px["P1"], px["P1b"]]), num_patches_list=[1, 1], params=greedy),
        ChatRequest("Please write a poem according to the image.", pixel_values=px["P1"],
                    history=[("<image>\nPlease describe the image shortly.", first_round_answer)],
                    params=greedy),
        ChatRequest("Tell me a story.", params=GenerationParams(
            max_new_tokens=10, do_sample=True, temperature=0.8, top_p=0.9, top_k=50, seed=1234)),
        ChatRequest("<image>\nWhat is it?", pixel_values=px["P3"],
                    params=GenerationParams(max_new_tokens=9, repetition_penalty=1.3)),
    ]


def test_info(engine: Engine) -> None:
    info = engine.info
    assert info.image_size == 448 and info.num_image_token == 256
    assert info.dtype == "float32" and info.device == "cpu" and info.attn_implementation == "sdpa"
    assert info.template in ("internlm2-chat", "Hermes-2")
    assert info.max_context == engine.spec.max_position_embeddings
    # special ids are looked up from the checkpoint's tokenizer, not assumed
    tiny = json.loads((engine.tokenizer.folder / "tiny_tokens.json").read_text())
    assert engine.tokenizer.img_context_id == tiny["img_context_token_id"]
    assert engine.stop_id == tiny["stop_token_id_used_by_chat"]


def test_batch_equals_one_at_a_time(engine: Engine, pixels: dict[str, torch.Tensor]) -> None:
    reqs = _requests(pixels)
    batched = engine.generate_batch(reqs)
    single = [engine.generate_batch([r])[0] for r in reqs]
    for b, s, r in zip(batched, single, reqs, strict=True):
        assert b.output_ids == s.output_ids
        assert b.text == s.text
        assert b.prompt_tokens == s.prompt_tokens > 0
        assert b.output_tokens == len(b.output_ids) == r.params.max_new_tokens
        assert b.finish_reason == "length"


def test_sampling_is_seeded_and_differs_from_greedy(engine: Engine) -> None:
    def run(**kw: object) -> list[int]:
        params = GenerationParams(max_new_tokens=12, **kw)  # type: ignore[arg-type]
        return engine.generate_batch([ChatRequest("Hello, who are you?", params=params)])[0].output_ids

    a = run(do_sample=True, temperature=1.5, seed=7)
    assert a == run(do_sample=True, temperature=1.5, seed=7)
    assert a != run(do_sample=True, temperature=1.5, seed=8) or a != run()
    # top_k=1 sampling is greedy
    assert run(do_sample=True, top_k=1, seed=3) == run()


def test_stop_token_ends_a_row(engine: Engine, pixels: dict[str, torch.Tensor],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    req = ChatRequest("<image>\nPlease describe the image shortly.", pixel_values=pixels["P1"],
                      params=GenerationParams(max_new_tokens=10))
    free = engine.generate_batch([req])[0].output_ids
    stop = free[2]
    monkeypatch.setattr(engine, "stop_id", stop)
    other = ChatRequest("Hello, who are you?", params=GenerationParams(max_new_tokens=10))
    res, res_other = engine.generate_batch([req, other])
    cut = free.index(stop) + 1
    assert res.finish_reason == "stop" and res.output_ids == free[:cut] and res.output_tokens == cut
    assert res_other.output_tokens == 10 or res_other.finish_reason == "stop"


def test_streaming_deltas_rebuild_the_text(engine: Engine, pixels: dict[str, torch.Tensor]) -> None:
    deltas: list[str] = []
    req = ChatRequest("<image>\nPlease describe the image shortly.", pixel_values=pixels["P1"],
                      params=GenerationParams(max_new_tokens=16), on_token=deltas.append)
    res = engine.generate_batch([req])[0]
    assert len(deltas) > 3
    assert "".join(deltas) == res.text
    assert all(d[-1] != "\ufffd" for d in deltas[:-1])  # incomplete UTF-8 is held back


def test_cancellation_between_steps(engine: Engine, pixels: dict[str, torch.Tensor]) -> None:
    seen: list[int] = []

    def cancel_after_three() -> bool:
        return len(seen) >= 3

    req = ChatRequest("Describe this picture.", pixel_values=pixels["P3"],
                      params=GenerationParams(max_new_tokens=16),
                      on_token=lambda d: seen.append(1), should_cancel=cancel_after_three)
    other = ChatRequest("Hello, who are you?", params=GenerationParams(max_new_tokens=16))
    res, res_other = engine.generate_batch([req, other])
    assert res.finish_reason == "canceled" and 3 <= res.output_tokens < 16
    assert res_other.output_ids == engine.generate_batch([other])[0].output_ids


def test_budget_refuses_before_model_work(engine: Engine) -> None:
    limit = engine.info.context_limit
    if engine.dynamic_ntk:  # no limit of its own (tests/models/test_engine_budget.py): a cap
        assert limit is None
        engine = Engine(engine.model, engine.tokenizer, engine.spec, engine.info, max_context_tokens=300)
        limit = 300
    assert limit is not None
    prompt = engine.check_budget(ChatRequest("Hi", params=GenerationParams(max_new_tokens=1)))
    ok = ChatRequest("Hi", params=GenerationParams(max_new_tokens=limit - prompt))
    assert engine.check_budget(ok) == prompt
    too_long = ChatRequest("Hi", params=GenerationParams(max_new_tokens=limit - prompt + 1))
    with pytest.raises(ContextTooLong, match=str(limit)):
        engine.check_budget(too_long)
    with pytest.raises(ContextTooLong):
        engine.generate_batch([too_long])


def test_invalid_requests(engine: Engine, pixels: dict[str, torch.Tensor]) -> None:
    with pytest.raises(InvalidInput):  # chat()'s tile-count assert
        engine.prepare(ChatRequest("<image>\nx", pixel_values=pixels["P3"], num_patches_list=[1, 1]))
    with pytest.raises(InvalidInput):
        engine.prepare(ChatRequest("x", pixel_values=torch.zeros(1, 3, 224, 224)))
    with pytest.raises(InvalidInput):  # a user cannot smuggle image tokens in
        engine.prepare(ChatRequest("look <IMG_CONTEXT> here"))
    with pytest.raises(InvalidInput):
        engine.prepare(ChatRequest("x", params=GenerationParams(max_new_tokens=0)))
    with pytest.raises(InvalidInput):
        engine.prepare(ChatRequest("x", params=GenerationParams(do_sample=True, temperature=0)))


def test_history_round_trip(engine: Engine, pixels: dict[str, torch.Tensor]) -> None:
    first = engine.chat("Describe this picture.", pixel_values=pixels["P1"],
                        params=GenerationParams(max_new_tokens=5))
    assert first.history == [("<image>\nDescribe this picture.", first.text)]
    second = engine.chat("And the colours?", pixel_values=pixels["P1"], history=first.history,
                         params=GenerationParams(max_new_tokens=5))
    assert second.history[0] == first.history[0] and second.history[1][0] == "And the colours?"
    assert second.prompt_tokens > first.prompt_tokens
