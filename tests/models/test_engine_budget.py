"""The token budget: InternLM2's dynamic-NTK rope answers prompts past max_position_embeddings
(run alone), the operator's max_context_tokens caps every model, other ropes keep their limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.engine import ChatRequest, Engine
from models.errors import ContextTooLong
from models.generation import GenerationParams


@pytest.fixture(scope="module")
def internlm2(kit_dir: Path) -> Engine:
    return Engine.load(kit_dir / "models" / "internvl2-internlm2", device="cpu", dtype="float32")


def _long_question(engine: Engine, extra: int) -> str:
    """A question whose prompt alone passes max_position_embeddings by about ``extra`` tokens."""
    words = ["panda"]
    one = GenerationParams(max_new_tokens=1)
    base = engine.check_budget(ChatRequest("panda", params=one))
    per_word = engine.check_budget(ChatRequest("panda panda", params=one)) - base
    words *= (engine.spec.max_position_embeddings - base + extra) // per_word + 1
    return " ".join(words)


def test_dynamic_ntk_prompt_past_the_context_runs_alone(internlm2: Engine) -> None:
    assert internlm2.dynamic_ntk and internlm2.info.context_limit is None
    long = ChatRequest(_long_question(internlm2, 40), params=GenerationParams(max_new_tokens=4))
    short = ChatRequest("Hello, who are you?", params=GenerationParams(max_new_tokens=4))
    p_long, p_short = internlm2.prepare(long), internlm2.prepare(short)
    assert p_long.prompt_tokens > internlm2.spec.max_position_embeddings  # no ContextTooLong
    assert internlm2.batch_key(p_long) != internlm2.batch_key(internlm2.prepare(long))  # alone
    assert internlm2.batch_key(p_short) == "shared"
    together = internlm2.generate_batch([p_long, p_short])
    assert together[0].output_ids == internlm2.generate_batch([p_long])[0].output_ids
    assert together[1].output_ids == internlm2.generate_batch([p_short])[0].output_ids
    assert together[0].output_tokens == 4 or together[0].finish_reason == "stop"


def test_operator_cap_applies_to_every_model(internlm2: Engine, kit_dir: Path) -> None:
    capped = Engine(internlm2.model, internlm2.tokenizer, internlm2.spec, internlm2.info,
                    max_context_tokens=2000)
    four = GenerationParams(max_new_tokens=4)
    assert capped.info.context_limit == 2000
    capped.check_budget(ChatRequest(_long_question(capped, 40), params=four))
    with pytest.raises(ContextTooLong, match=r"operator's limit \(max_context_tokens\) of 2000"):
        capped.check_budget(ChatRequest(_long_question(capped, 800), params=four))
    qwen2 = Engine.load(kit_dir / "models" / "internvl2-qwen2", device="cpu", dtype="float32",
                        max_context_tokens=10**9)
    assert not qwen2.dynamic_ntk and qwen2.info.context_limit == qwen2.spec.max_position_embeddings
    limit = qwen2.spec.max_position_embeddings
    with pytest.raises(ContextTooLong, match=f"model's context of {limit}"):
        qwen2.check_budget(ChatRequest("Hi", params=GenerationParams(max_new_tokens=limit)))
    small = Engine(qwen2.model, qwen2.tokenizer, qwen2.spec, qwen2.info, max_context_tokens=64)
    assert small.info.context_limit == 64
