"""Continuous batching (models.continuous) in float32 on the CPU: whatever the arrival pattern,
cancels and per-row settings, every request's tokens equal the same request run alone through
the static path (``Engine.generate_batch``), and slots are reused as rows end."""

from __future__ import annotations

import copy
import dataclasses
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from models.continuous import ContinuousBatcher, slot_capacity, unsupported
from models.decode_step import DecodeStep, bucket
from models.engine import ChatRequest, ChatResult, Engine
from models.generation import GenerationParams
from models.slots import SlotKV

WORDS = ["cat", "dog", "bird", "fish", "tree", "house", "car", "moon"]


@pytest.fixture(scope="module", params=["internvl2-qwen2", "internvl2-internlm2"])
def engine(request: pytest.FixtureRequest, kit_dir: Path) -> Engine:
    torch.set_num_threads(1)
    return Engine.load(kit_dir / "models" / request.param, device="cpu", dtype="float32")


def _text(i: int, new: int, **kw: object) -> ChatRequest:
    return ChatRequest(f"Tell me about the {WORDS[i % 8]} number {i}.",
                       params=GenerationParams(max_new_tokens=new, **kw))  # type: ignore[arg-type]


def _image(i: int, tiles: int, new: int) -> ChatRequest:
    pixels = torch.randn(tiles, 3, 448, 448, generator=torch.Generator().manual_seed(i))
    return ChatRequest(f"<image>\nWhat is in picture {i}?", pixel_values=pixels,
                       params=GenerationParams(max_new_tokens=new))


def _alone(engine: Engine, reqs: list[ChatRequest]) -> list[list[int]]:
    return [engine.generate_batch([r])[0].output_ids for r in reqs]


def _after_tokens(n: int) -> tuple[threading.Event, object]:
    """An event set once a request's stream has produced ``n`` pieces, and its on_token hook."""
    seen = {"n": 0}
    event = threading.Event()

    def on_token(_delta: str) -> None:
        seen["n"] += 1
        if seen["n"] >= n:
            event.set()

    return event, on_token


def test_staggered_arrivals_give_the_tokens_of_each_request_alone(engine: Engine) -> None:
    reqs = [_text(i, 3 + 4 * (i % 4)) for i in range(9)] + [_image(1, 2, 10), _image(2, 1, 6)]
    expected = _alone(engine, reqs)
    with ContinuousBatcher(engine, max_requests=4, max_tokens=4 * 2048) as batcher:
        futures: list[Future[ChatResult]] = []
        for k, r in enumerate(reqs):
            if k % 3 == 0:  # every third request arrives while the running ones are mid-answer
                event, hook = _after_tokens(2)
                r = dataclasses.replace(r, on_token=hook)  # type: ignore[arg-type]
                futures.append(batcher.submit(r))
                event.wait(30)
            else:
                futures.append(batcher.submit(r))
        got = [f.result(timeout=120).output_ids for f in futures]
    assert got == expected
    s = batcher.stats
    assert s.requests == len(reqs) and s.largest_batch == 4  # more requests than slots: reused
    assert s.rows_stepped > s.decode_steps  # rows of different arrival times stepped together
    assert s.tokens_generated == sum(len(x) for x in expected)


def test_newcomers_of_one_prompt_length_share_one_prefill(engine: Engine) -> None:
    reqs = [_image(i, 2, 5 + i) for i in range(4)]  # one template, one tile count: equal lengths
    expected = _alone(engine, reqs)
    with ContinuousBatcher(engine, start=False, max_requests=4, max_tokens=4 * 1024) as batcher:
        futures = [batcher.submit(r) for r in reqs]
        batcher.start()
        got = [f.result(timeout=120).output_ids for f in futures]
    assert got == expected
    assert batcher.stats.batches == 1 and batcher.stats.largest_batch == 4  # one admission round


def test_mixed_settings_share_steps_without_changing_anyone(engine: Engine) -> None:
    reqs = [
        _text(0, 12),
        _text(1, 12, do_sample=True, temperature=0.7, top_k=20, seed=7),
        _text(2, 12, do_sample=True, top_p=0.8, seed=11),
        _text(3, 12, repetition_penalty=1.3),
        _text(4, 12, logprobs=True, top_logprobs=3),
        _text(5, 12, stop=("e",)),
        _text(6, 16, grammar='%llguidance {}\nstart: "yes" | "no"'),
    ]
    expected = [engine.generate_batch([r])[0] for r in reqs]
    with ContinuousBatcher(engine, max_requests=8, max_tokens=8 * 512) as batcher:
        results = [f.result(timeout=120) for f in [batcher.submit(r) for r in reqs]]
    for got, want in zip(results, expected, strict=True):
        assert (got.output_ids, got.text) == (want.output_ids, want.text)
        assert got.finish_reason == want.finish_reason
        # the same ids; the values to float32 rounding (each step attends over a longer, masked span)
        assert [lp["id"] for lp in got.logprobs or []] == [lp["id"] for lp in want.logprobs or []]
        for a, b in zip(got.logprobs or [], want.logprobs or [], strict=True):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-5)
    assert results[6].text in ("yes", "no")


def test_a_canceled_row_leaves_at_once_and_the_others_are_untouched(engine: Engine) -> None:
    reqs = [_text(i, 20) for i in range(4)]
    expected = _alone(engine, reqs)
    stop = threading.Event()
    event, hook = _after_tokens(3)
    victim = dataclasses.replace(_text(9, 200), on_token=hook, should_cancel=stop.is_set)
    with ContinuousBatcher(engine, max_requests=4, max_tokens=4 * 512) as batcher:
        fv = batcher.submit(victim)
        futures = [batcher.submit(r) for r in reqs[:2]]
        event.wait(30)
        stop.set()
        futures += [batcher.submit(r) for r in reqs[2:]]  # one of them takes the freed slot
        canceled = fv.result(timeout=60)
        got = [f.result(timeout=120).output_ids for f in futures]
    assert canceled.finish_reason == "canceled" and 3 <= canceled.output_tokens < 200
    assert got == expected


def test_requests_that_do_not_fit_a_slot_run_alone_on_the_static_path(engine: Engine) -> None:
    reqs = [_text(0, 6), _text(1, 300), _text(2, 5)]  # 300 new tokens > a slot of 128 positions
    expected = _alone(engine, reqs)
    with ContinuousBatcher(engine, max_requests=2, max_tokens=256) as batcher:
        assert slot_capacity(engine, 2, 256) == 128
        got = [f.result(timeout=120).output_ids for f in [batcher.submit(r) for r in reqs]]
    assert got == expected


def test_a_cancelled_future_never_runs(engine: Engine) -> None:
    with ContinuousBatcher(engine, start=False, max_requests=2) as batcher:
        f = batcher.submit(_text(0, 4))
        assert f.cancel()
        ok = batcher.submit(_text(1, 4))
        batcher.start()
        assert ok.result(timeout=60).output_tokens == 4
    assert batcher.stats.requests == 1


def test_an_unsupported_model_is_served_by_static_batches(engine: Engine) -> None:
    flash = copy.copy(engine)
    flash.info = dataclasses.replace(engine.info, attn_implementation="flash_attention_2")
    assert unsupported(flash) == "flash_attention_2 attention takes no per-row mask"
    assert unsupported(engine) is None
    reqs = [_text(i, 5) for i in range(3)]
    with ContinuousBatcher(flash, max_requests=4) as batcher:
        got = [f.result(timeout=60).output_ids for f in [batcher.submit(r) for r in reqs]]
    assert got == _alone(engine, reqs) and batcher.stats.decode_steps > 0


def test_the_slot_step_gives_the_logits_of_the_model_forward(engine: Engine) -> None:
    """Two rows of different lengths in slots 0 and 2 (slot 1 free): each row's logits equal
    the model's own forward over that row alone."""
    model = engine.model
    kv = SlotKV(model.config.get_text_config(), slots=4, capacity=64, dtype=torch.float32, device="cpu")
    step = DecodeStep(model, kv, graphs=False)
    prompts = {0: [5, 6, 7, 8, 9, 10, 11], 2: [12, 13, 14]}
    want = {}
    with torch.inference_mode():
        for slot, ids in prompts.items():
            t = torch.tensor([ids])
            out = model(input_ids=t[:, :-1], use_cache=True)
            layers = [(layer.keys, layer.values) for layer in out.cache.layers]
            kv.store(slot, layers)
            want[slot] = model(input_ids=t).logits[0, -1].float()
        logits = step([11, 0, 14], [6, 0, 2], longest=7)
    assert logits.shape[0] == 3  # eager: the occupied slots as they are
    assert bucket(3, 4) == 4 and bucket(5, 64, floor=256) == 64 and bucket(300, 4096, floor=256) == 512
    for slot in prompts:
        torch.testing.assert_close(logits[slot], want[slot], rtol=1e-5, atol=1e-5)


def test_the_gauges_follow_the_running_rows(engine: Engine) -> None:
    """``running_rows`` and ``kv_tokens_in_use`` (what a worker's /metrics exports) as seen
    between steps, and back to 0 once every row has left; no accelerator memory on the CPU."""
    seen: list[tuple[int, int]] = []
    with ContinuousBatcher(engine, max_requests=4, max_tokens=4 * 512) as batcher:
        def watch(_delta: str) -> None:  # on the engine thread, between steps
            seen.append((batcher.stats.running_rows, batcher.stats.kv_tokens_in_use))

        reqs = [_text(i, 6) for i in range(3)]
        for r in reqs:
            r.on_token = watch
        for f in [batcher.submit(r) for r in reqs]:
            f.result(timeout=120)
        stats = batcher.stats
    assert max(rows for rows, _ in seen) >= 2 and max(kv for _, kv in seen) > 0
    assert stats.running_rows == 0 and stats.kv_tokens_in_use == 0
    assert stats.gpu_memory_allocated_bytes == 0 == stats.gpu_memory_reserved_bytes
