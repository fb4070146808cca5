"""Several tasks per job (jobs.tasks): normalisation and the stable codes of what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import InvalidRequest
from jobs.requests import RequestLimits, normalize_job_request
from jobs.tasks import MAX_TASKS, job_tasks
from tests.support.urls import AnyUrl

IMAGE = {"type": "image", "url": "s3://b-1/cat.jpg"}




def _norm(body: dict[str, Any], limits: RequestLimits | None = None) -> dict[str, Any]:
    return normalize_job_request(body, AnyUrl(), limits or RequestLimits())


def _refused(body: dict[str, Any], limits: RequestLimits | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        _norm(body, limits)
    return exc.value


def test_tasks_are_normalised_and_stand_for_the_jobs_they_replace() -> None:
    req = _norm({"media": [IMAGE], "generation": {"max_new_tokens": 40, "stop": ["."]}, "tasks": [
        {"name": "caption", "prompts": ["Describe it.", "Shorter."]},
        {"name": "tags", "messages": [{"role": "user", "content": "Tags?"},
                                      {"role": "assistant", "content": "cat"},
                                      {"role": "user", "content": "More?"}],
         "generation": {"max_new_tokens": 8}},
        {"name": "boxes", "task": "grounding", "prompts": ["the cat"]},
    ]})
    assert "prompts" not in req and "history" not in req
    assert req["tasks"][0] == {"name": "caption", "task": "chat", "prompts": ["Describe it.", "Shorter."]}
    assert req["tasks"][1]["generation"]["max_new_tokens"] == 8
    assert req["tasks"][1]["generation"]["stop"] == ["."]  # the job's other fields stay
    specs = job_tasks(req)
    assert [s["name"] for s in specs] == ["caption", "tags", "boxes"]
    assert specs[0]["generation"] == req["generation"] and specs[0]["prompts"] == ["Describe it.", "Shorter."]
    assert specs[1]["history"] == [("Tags?", "cat")] and specs[1]["prompts"] == ["More?"]
    assert specs[2]["task"] == "grounding"


def test_a_request_without_tasks_is_stored_as_before() -> None:
    assert "tasks" not in _norm({"media": [IMAGE]})


@pytest.mark.parametrize(("body", "code"), [
    ({"media": [IMAGE], "tasks": []}, "tasks_empty"),
    ({"media": [IMAGE], "tasks": [{"name": f"t{i}", "prompts": ["x"]} for i in range(MAX_TASKS + 1)]},
     "too_many_tasks"),
    ({"media": [IMAGE], "prompts": ["x"], "tasks": [{"name": "a", "prompts": ["x"]}]}, "tasks_conflict"),
    ({"media": [IMAGE], "history": [], "tasks": [{"name": "a", "prompts": ["x"]}]}, "tasks_conflict"),
    ({"media": [IMAGE], "task": "grounding", "tasks": [{"name": "a", "prompts": ["x"]}]}, "tasks_conflict"),
    ({"media": [IMAGE], "tasks": [{"name": "a", "prompts": ["x"]}, {"name": "a", "prompts": ["y"]}]},
     "duplicate_task_name"),
    ({"media": [IMAGE], "tasks": [{"name": "a"}]}, "invalid_task"),
    ({"media": [IMAGE], "tasks": [{"name": "a", "prompts": ["x"], "messages": [
        {"role": "user", "content": "x"}]}]}, "invalid_task"),
    ({"media": [IMAGE], "tasks": [{"name": "a", "messages": [{"role": "assistant", "content": "x"}]}]},
     "invalid_messages"),
    ({"media": [IMAGE], "tasks": [{"name": "a", "messages": [{"role": "user", "content": "x"},
                                                           {"role": "assistant", "content": "y"}]}]},
     "invalid_messages"),
    ({"media": [IMAGE], "tasks": [{"name": "a", "task": "grounding", "messages": [
        {"role": "user", "content": "x"}]}]}, "invalid_messages"),
    ({"media": [IMAGE], "tasks": [{"name": "a", "prompts": ["x"],
                                   "generation": {"response_format": {"type": "nope"}}}]},
     "invalid_response_format"),
])
def test_refusals_carry_stable_codes(body: dict[str, Any], code: str) -> None:
    assert _refused(body).code == code


def test_bad_fields_of_a_task_are_located() -> None:
    err = _refused({"media": [IMAGE], "tasks": [
        {"name": "ok", "prompts": ["x"]},
        {"name": "bad name!", "prompts": [" "], "generation": {"max_new_tokens": 0}}]})
    assert ["tasks", 1, "name"] in [e["loc"] for e in err.errors]
    err = _refused({"media": [IMAGE], "tasks": [
        {"name": "a", "prompts": [" "]}, {"name": "b", "prompts": ["x"], "generation": {"top_k": -1}}]})
    locs = [e["loc"] for e in err.errors]
    assert ["tasks", 0, "prompts", 0] in locs and ["tasks", 1, "generation", "top_k"] in locs
    err = _refused({"media": [], "tasks": [{"name": "g", "task": "grounding", "prompts": ["a dog"]}]})
    assert err.errors[0]["loc"] == ["tasks", 0, "task"]


def test_context_is_checked_per_task() -> None:
    body = {"media": [IMAGE], "generation": {"max_new_tokens": 100},
            "tasks": [{"name": "short", "prompts": ["x"]},
                      {"name": "long", "prompts": ["x"], "generation": {"max_new_tokens": 2000}}]}
    err = _refused(body, RequestLimits(max_context_tokens=1024))
    assert err.code == "context_too_long" and [e["loc"] for e in err.errors] == [["tasks", 1]]
    body["tasks"][1]["generation"]["max_new_tokens"] = 500  # type: ignore[index]
    _norm(body, RequestLimits(max_context_tokens=1024))
