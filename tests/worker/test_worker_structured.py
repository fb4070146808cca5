"""Structured output through the worker: request fields become GenerationParams and the system
message, results render ``json`` / ``logprobs`` per round and ``json`` of the final answer; and
one end-to-end job through a real worker process on the tiny InternLM2 checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from jobs.formats import grammar_for
from tests.worker.stack import Stack, build_stack, destroy_stack
from worker.pipeline import generation_params
from worker.record import JobOutcome, RoundResult, output_json

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["caption", "count"],
          "properties": {"caption": {"type": "string", "maxLength": 8},
                         "count": {"type": "integer", "minimum": 0, "maximum": 9}}}
FMT = {"type": "json_schema", "json_schema": SCHEMA}


def test_generation_params_carry_the_structured_fields() -> None:
    p = generation_params({"max_new_tokens": 30, "response_format": FMT, "stop": ["\n\n", "END"],
                           "logprobs": True, "top_logprobs": 2, "system_prompt": "terse"})
    assert p.grammar == grammar_for(FMT) and p.json_output
    assert (p.stop, p.logprobs, p.top_logprobs) == (("\n\n", "END"), True, 2)
    choice = generation_params({"response_format": {"type": "choice", "choices": ["a", "b"]}})
    assert choice.grammar is not None and not choice.json_output
    plain = generation_params({"max_new_tokens": 30})  # stored requests from before these fields
    assert (plain.grammar, plain.stop, plain.logprobs, plain.top_logprobs) == (None, (), False, 0)


def test_output_json_renders_json_and_logprobs_only_when_present() -> None:
    lp = [{"token": "{", "id": 5, "logprob": -0.5}]
    outcome = JobOutcome(rounds=[
        RoundResult("p1", '{"a":', "length", 3, 4, logprobs=lp),
        RoundResult("p2", '{"a":1}', "stop", 5, 6, has_json=True, json={"a": 1}),
    ])
    out = output_json(outcome)
    assert out["json"] == {"a": 1} and out["text"] == '{"a":1}'
    assert out["rounds"][0] == {"prompt": "p1", "text": '{"a":', "finish_reason": "length", "logprobs": lp}
    assert out["rounds"][1]["json"] == {"a": 1} and "logprobs" not in out["rounds"][1]
    cut = output_json(JobOutcome(rounds=[RoundResult("p", '{"a":', "length", 3, 4)]))
    assert "json" not in cut and "json" not in cut["rounds"][0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = build_stack(tmp_path_factory.mktemp("worker-structured"))
    try:
        st.start_worker(queues="gpu,io")
        yield st
    finally:
        destroy_stack(st)


@pytest.mark.services
@pytest.mark.slow
def test_a_json_schema_job_end_to_end(stack: Stack) -> None:
    gen: dict[str, Any] = {"max_new_tokens": 60, "response_format": FMT, "logprobs": True, "top_logprobs": 2}
    job = stack.submit({"prompts": ["Describe the scene.", "Again, shorter."], "generation": gen})
    done = stack.wait(job["id"], 180)
    assert done["status"] == "succeeded", (done, stack.logs())
    out = done["output"]
    jsonschema.validate(out["json"], SCHEMA)
    for r in out["rounds"]:
        assert r["finish_reason"] == "stop"
        jsonschema.validate(r["json"], SCHEMA)
        assert r["logprobs"] and all(len(e["top_logprobs"]) == 2 for e in r["logprobs"])
    # the system prompt replaces the template's system message: the prompt's token count changes
    plain = stack.wait(stack.submit({"prompts": ["Hi."], "generation": {"max_new_tokens": 2}})["id"], 180)
    system = stack.wait(stack.submit({"prompts": ["Hi."], "generation": {
        "max_new_tokens": 2, "system_prompt": "word " * 40}})["id"], 180)
    assert plain["status"] == system["status"] == "succeeded"
    assert system["metrics"]["input_tokens"] > plain["metrics"]["input_tokens"] + 20
