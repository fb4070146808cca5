"""Constrained decoding through the engine with the sentencepiece tokenizers of the kit
(InternVL2-2B's InternLM2 and Phi-3-mini's, on tiny random-weight checkpoints built around the
real tokenizer files): the byte-level checkpoints of test_constrained.py do not cover how a
sentencepiece vocabulary spells bytes (``▁``, ``<0x0A>``) inside a grammar's token mask."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from jobs.formats import grammar_for
from models.engine import ChatRequest, Engine
from models.generation import GenerationParams
from models.testing import write_test_checkpoint
from tests.models.structured_schemas import SCHEMAS

TOKENIZERS = Path(__file__).resolve().parents[1] / "data" / "conformance" / "tokenizers"
FAMILIES = ("internvl2-2b-internlm2", "phi3-mini")
CHOICES = ["a cat", "a dog", "nothing at all"]
PATTERN = r"[0-9]{1,3}( (apples|pears))?"
PICKED = SCHEMAS[:6]  # a sample of the twenty: the vocabulary, not the schema, is under test


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    folder = write_test_checkpoint(tmp_path_factory.mktemp("sp") / request.param, "internlm2", seed=5,
                                   tokenizer=TOKENIZERS / request.param)
    return Engine.load(folder, device="cpu", dtype="float32")


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_sentencepiece_constrained_answers_validate(engine: Engine, sample: bool) -> None:
    kw: dict[str, object] = {"do_sample": True, "temperature": 1.5, "top_k": 0, "seed": 11} if sample else {}
    reqs = [ChatRequest(f"Describe the scene as JSON ({i}).", params=GenerationParams(  # type: ignore[arg-type]
        grammar=grammar_for({"type": "json_schema", "json_schema": s}), json_output=True,
        max_new_tokens=300, **kw)) for i, s in enumerate(PICKED)]
    reqs.append(ChatRequest("Which animal?", params=GenerationParams(  # type: ignore[arg-type]
        grammar=grammar_for({"type": "choice", "choices": CHOICES}), max_new_tokens=40, **kw)))
    reqs.append(ChatRequest("How many?", params=GenerationParams(  # type: ignore[arg-type]
        grammar=grammar_for({"type": "regex", "pattern": PATTERN}), max_new_tokens=40, **kw)))
    free = ChatRequest("Say anything.", params=GenerationParams(max_new_tokens=12))
    results = engine.generate_batch([*reqs, free])
    for i, (res, schema) in enumerate(zip(results, PICKED, strict=False)):
        assert res.finish_reason == "stop" and res.has_json, (i, res.text)
        assert json.loads(res.text) == res.json
        jsonschema.validate(res.json, schema)
    choice, regex = results[len(PICKED)], results[len(PICKED) + 1]
    assert (choice.finish_reason, regex.finish_reason) == ("stop", "stop")
    assert choice.text in CHOICES
    assert re.fullmatch(PATTERN, regex.text), regex.text
    alone = engine.generate_batch([ChatRequest("Say anything.", params=free.params)])[0]
    assert results[-1].output_ids == alone.output_ids  # the free row is untouched by its neighbours
