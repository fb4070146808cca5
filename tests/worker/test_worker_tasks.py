"""Several tasks per job, end to end: the real API, a real worker with its engine in a process of
its own (continuous batching), the tiny InternLM2 checkpoint on the CPU, the image in S3.

The DONE criterion: a job with three tasks on one image runs the ViT once — counted by the
engine's vision path (``metrics.vision_tiles``: the tiles the ViT encoded for the job) — and each
task's output equals the output of the job with that task's fields alone (greedy decoding).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.slow_http import slow_image
from tests.worker.stack import Stack, build_stack, destroy_stack

pytestmark = [pytest.mark.services, pytest.mark.slow]

KIT = Path(__file__).resolve().parents[1] / "data" / "conformance"
GREEDY = {"max_new_tokens": 8, "do_sample": False}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = build_stack(tmp_path_factory.mktemp("worker-tasks"), engine_process=True)
    try:
        st.start_worker(queues="gpu,io")
        yield st
    finally:
        destroy_stack(st)


@pytest.fixture(scope="module")
def media(stack: Stack) -> list[dict[str, Any]]:
    url = stack.put_file(KIT / "images" / "img11_672x448.png")
    return [{"type": "image", "url": url, "max_tiles": 2}]


def _succeeded(stack: Stack, job_id: str) -> dict[str, Any]:
    done = stack.wait(job_id, 180)
    assert done["status"] == "succeeded", (done, stack.logs())
    return done


def test_three_tasks_run_the_vit_once_and_answer_what_three_jobs_answer(
        stack: Stack, media: list[dict[str, Any]]) -> None:
    tasks = [
        {"name": "caption", "prompts": ["Describe the image shortly."]},
        {"name": "talk", "prompts": ["What colours are there?", "Which one is the brightest?"]},
        {"name": "boxes", "task": "grounding", "prompts": ["the left half", "a red thing"],
         "generation": {"max_new_tokens": 12}},
    ]
    alone_bodies = [
        {"media": media, "prompts": tasks[0]["prompts"], "generation": GREEDY},
        {"media": media, "prompts": tasks[1]["prompts"], "generation": GREEDY},
        {"media": media, "task": "grounding", "prompts": tasks[2]["prompts"],
         "generation": {**GREEDY, "max_new_tokens": 12}},
    ]
    job = stack.submit({"media": media, "tasks": tasks, "generation": GREEDY})
    alone = [stack.submit(b) for b in alone_bodies]
    done = _succeeded(stack, job["id"])
    separate = [_succeeded(stack, j["id"]) for j in alone]

    tiles = done["metrics"]["tiles"]
    assert tiles == 3
    assert done["metrics"]["vision_tiles"] == tiles  # one ViT pass for 5 requests
    # each separate job runs it once for itself (the two-round one once, not twice)
    assert [s["metrics"]["vision_tiles"] for s in separate] == [tiles] * 3
    out = done["output"]
    assert list(out) == ["tasks"] and set(out["tasks"]) == {"caption", "talk", "boxes"}
    for task, alone_job in zip(tasks, separate, strict=True):
        assert out["tasks"][task["name"]] == alone_job["output"]
        per_task = done["metrics"]["tasks"][task["name"]]
        assert per_task["input_tokens"] == alone_job["metrics"]["input_tokens"]
        assert per_task["output_tokens"] == alone_job["metrics"]["output_tokens"]
        assert per_task["finish_reason"] == alone_job["metrics"]["finish_reason"]
    assert "boxes" in out["tasks"]["boxes"]
    assert done["metrics"]["output_tokens"] == sum(s["metrics"]["output_tokens"] for s in separate)


def test_a_conversation_in_messages_answers_like_its_rounds(stack: Stack,
                                                           media: list[dict[str, Any]]) -> None:
    """``messages`` [u1, a1, u2], with a1 the first round's answer, is the second round."""
    rounds = _succeeded(stack, stack.submit({"media": media, "generation": GREEDY,
                                             "prompts": ["Name one shape.", "And another one?"]})["id"])
    first, second = rounds["output"]["rounds"]
    messages = [{"role": "user", "content": "Name one shape."},
                {"role": "assistant", "content": first["text"]},
                {"role": "user", "content": "And another one?"}]
    done = _succeeded(stack, stack.submit({"media": media, "generation": GREEDY, "tasks": [
        {"name": "chat", "messages": messages}, {"name": "short", "prompts": ["Name one shape."],
                                                 "generation": {"max_new_tokens": 3}}]})["id"])
    assert done["output"]["tasks"]["chat"]["text"] == second["text"]
    assert done["output"]["tasks"]["short"]["rounds"][0]["finish_reason"] == "length"
    assert done["metrics"]["tasks"]["short"]["output_tokens"] == 3
    assert done["metrics"]["vision_tiles"] == done["metrics"]["tiles"]


def test_bad_tasks_are_refused_at_submission(stack: Stack, media: list[dict[str, Any]]) -> None:
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"media": media, "prompts": ["x"],
                                     "tasks": [{"name": "a", "prompts": ["y"]}]})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "tasks_conflict"
        r = c.post("/v1/jobs", json={"media": media, "tasks": [{"name": "a", "prompts": ["x"]},
                                                               {"name": "a", "prompts": ["y"]}]})
        assert r.status_code == 422 and r.json()["code"] == "duplicate_task_name"


def test_sse_tags_each_tasks_tokens_with_its_name(stack: Stack) -> None:
    from tests.worker.test_worker_jobs import sse_events

    with slow_image(2.0) as url:  # the job is still fetching its image when the stream opens
        job = stack.submit({"media": [{"type": "image", "url": url}],
                            "generation": {"max_new_tokens": 20, "do_sample": False}, "tasks": [
                                {"name": "story", "prompts": ["Tell me a story.", "And another one."]},
                                {"name": "poem", "prompts": ["Write a poem."]}]})
        events: list[tuple[str, Any]] = []
        t = threading.Thread(target=sse_events, args=(stack, job["id"], events))
        t.start()
        t.join(150)
    assert not t.is_alive()
    final = events[-1][1]
    assert events[-1][0] == "done" and final["status"] == "succeeded"
    streamed: dict[tuple[str, int], str] = {}
    for event, data in events:
        if event == "token":
            key = (data["task"], data["round"])
            streamed[key] = streamed.get(key, "") + data["text"]
    assert {task for task, _ in streamed} == {"story", "poem"}
    for (task, r), text in streamed.items():
        answer = final["output"]["tasks"][task]["rounds"][r]["text"]
        # the stream may open while a task's first round runs: that round ends the same
        assert answer.endswith(text) and (r == min(i for t, i in streamed if t == task) or answer == text)
