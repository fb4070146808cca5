"""Structured output in the decoding loop: every constrained answer parses and validates (20
JSON schemas, a choice, a regex) on the kit's tiny random-weight checkpoints, whose free answers
are noise, greedy and sampled, batched together with free rows that keep their exact ids; the
grammar's token tables of every tokenizer family of the kit; stop strings; logprobs."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from jobs.formats import grammar_for
from models.constrained import GrammarConstraint, vocab_for
from models.engine import ChatRequest, Engine
from models.generation import GenerationParams
from models.tokenizer import Tokenizer
from tests.models.structured_schemas import SCHEMAS

VARIANTS = ("internvl2-internlm2", "internvl2-qwen2")
CHOICES = ["a cat", "a dog", "nothing at all"]
PATTERN = r"[0-9]{1,3}( (apples|pears))?"


def _json_params(schema: dict, **kw: object) -> GenerationParams:
    fmt = {"type": "json_schema", "json_schema": schema}
    return GenerationParams(grammar=grammar_for(fmt), json_output=True, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=VARIANTS)
def engine(request: pytest.FixtureRequest, kit_dir: Path) -> Engine:
    return Engine.load(kit_dir / "models" / request.param, device="cpu", dtype="float32")


def _constrained_requests(**kw: object) -> list[ChatRequest]:
    reqs = [ChatRequest(f"Describe the scene as JSON ({i}).",
                        params=_json_params(s, max_new_tokens=300, **kw)) for i, s in enumerate(SCHEMAS)]
    reqs.append(ChatRequest("Which animal?", params=GenerationParams(
        grammar=grammar_for({"type": "choice", "choices": CHOICES}), max_new_tokens=40, **kw)))  # type: ignore[arg-type]
    reqs.append(ChatRequest("How many?", params=GenerationParams(
        grammar=grammar_for({"type": "regex", "pattern": PATTERN}), max_new_tokens=40, **kw)))  # type: ignore[arg-type]
    return reqs


def _check_all(results: list, reqs: list[ChatRequest]) -> None:
    for i, (res, schema) in enumerate(zip(results[:20], SCHEMAS, strict=True)):
        assert res.finish_reason == "stop", (i, res.text)
        assert res.has_json, (i, res.text)
        assert json.loads(res.text) == res.json
        jsonschema.validate(res.json, schema)
    choice, regex = results[20], results[21]
    assert (choice.finish_reason, regex.finish_reason) == ("stop", "stop")
    assert choice.text in CHOICES and not choice.has_json
    assert re.fullmatch(PATTERN, regex.text), regex.text


def test_greedy_constrained_answers_all_validate(engine: Engine) -> None:
    reqs = _constrained_requests()
    _check_all(engine.generate_batch(reqs), reqs)


def test_sampled_constrained_answers_all_validate(engine: Engine) -> None:
    reqs = _constrained_requests(do_sample=True, temperature=1.5, top_k=0, seed=7)
    _check_all(engine.generate_batch(reqs), reqs)


def test_free_rows_keep_their_ids_next_to_constrained_rows(engine: Engine) -> None:
    free = [ChatRequest("Describe the image.", params=GenerationParams(max_new_tokens=24)),
            ChatRequest("Say something.",
                        params=GenerationParams(max_new_tokens=24, do_sample=True, seed=11))]
    alone = [engine.generate_batch([r])[0].output_ids for r in free]
    mixed = engine.generate_batch([_constrained_requests()[5], free[0], _constrained_requests()[20], free[1]])
    assert [mixed[1].output_ids, mixed[3].output_ids] == alone
    assert mixed[0].has_json and mixed[2].text in CHOICES


def test_grammar_cut_short_is_length_without_json(engine: Engine) -> None:
    schema = {"type": "object", "properties": {"caption": {"type": "string"}}, "required": ["caption"]}
    res = engine.generate_batch([ChatRequest("Describe.", params=_json_params(schema, max_new_tokens=6))])[0]
    assert res.finish_reason == "length" and res.output_tokens == 6
    assert not res.has_json and res.json is None
    with pytest.raises(ValueError):
        json.loads(res.text)


def test_stop_strings_end_the_row_and_are_not_in_the_text(engine: Engine) -> None:
    base = engine.generate_batch([ChatRequest("Describe.", params=GenerationParams(max_new_tokens=40))])[0]
    text = base.text
    assert len(text) > 12
    stop = text[8:10]
    cut = text.find(stop)
    res = engine.generate_batch([ChatRequest("Describe.", params=GenerationParams(
        max_new_tokens=40, stop=("\u2603never", stop)))])[0]
    assert res.finish_reason == "stop"
    assert res.text == text[:cut].strip()
    assert res.output_ids == base.output_ids[:len(res.output_ids)] and len(res.output_ids) < 40


def test_logprobs_per_token(engine: Engine) -> None:
    res = engine.generate_batch([ChatRequest("Describe.", params=GenerationParams(
        max_new_tokens=8, logprobs=True, top_logprobs=3))])[0]
    assert res.logprobs is not None and len(res.logprobs) == res.output_tokens == len(res.output_ids)
    for tid, entry in zip(res.output_ids, res.logprobs, strict=True):
        top = entry["top_logprobs"]
        assert entry["id"] == tid and entry["logprob"] <= 0
        values = [t["logprob"] for t in top]
        assert len(top) == 3 and values == sorted(values, reverse=True)
        assert top[0]["id"] == tid  # greedy: the chosen token is the most likely one
        assert top[0]["logprob"] == pytest.approx(entry["logprob"])
    plain = engine.generate_batch([ChatRequest("Describe.", params=GenerationParams(max_new_tokens=8))])[0]
    assert plain.output_ids == res.output_ids and plain.logprobs is None


FAMILIES = [("models", "internvl2-qwen2", "<|im_end|>", True),
            ("tokenizers", "internvl2-1b-qwen2", "<|im_end|>", True),
            ("tokenizers", "internvl2-2b-internlm2", "<|im_end|>", True),
            ("tokenizers", "phi3-mini", "<|end|>", False)]


@pytest.mark.parametrize("where,name,stop,images", FAMILIES, ids=[f[1] for f in FAMILIES])
def test_noise_walks_validate_in_every_tokenizer_family(kit_dir: Path, where: str, name: str, stop: str,
                                                        images: bool) -> None:
    """A model whose choices are noise: each step takes a random allowed id (the stop token
    whenever the grammar allows it, half of the time). The real checkpoint tokenizers: byte-level
    BPE (Qwen2, 151k ids) and sentencepiece (InternLM2 92k, Phi-3 32k)."""
    tok = Tokenizer.load(kit_dir / where / name, require_image_tokens=images)
    stop_id = tok.stop_id(stop)
    vocab = vocab_for(tok, stop_id)
    rng = random.Random(name)
    for schema in SCHEMAS:
        cons = GrammarConstraint(vocab, grammar_for({"type": "json_schema", "json_schema": schema}))
        ids: list[int] = []
        for _ in range(400):
            bits = cons.mask_bits().view(np.uint32)
            allowed = np.flatnonzero(np.unpackbits(bits.view(np.uint8), bitorder="little"))
            assert len(allowed), ids
            if stop_id in allowed and (len(allowed) == 1 or rng.random() < 0.5):
                break
            tid = int(allowed[rng.randrange(len(allowed))])
            ids.append(tid)
            cons.advance(tid)
        else:
            pytest.fail(f"{name}: no end after 400 tokens: {vocab.text_of(ids)!r}")
        text = vocab.text_of(ids)
        jsonschema.validate(json.loads(text), schema)
        # the checkpoint's own decoding gives the same text (byte tables agree with the tokenizer)
        decoded = tok.decode(ids)
        assert decoded.strip() == text.strip() or tok.cleans_up_spaces, (decoded, text)
