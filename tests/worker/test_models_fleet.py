"""Two models in one fleet, with real worker processes: the tiny InternLM2 and the tiny Qwen2
checkpoints (different weights, different answers), each served by its own worker on its own
queue (``gpu.<model>``), on Redis and PostgreSQL.

- each job is answered by the model it named (or the default), exactly as that engine answers
  alone, and records the model and the checkpoint's revision; an unknown model is refused (422
  ``unknown_model``) for a job and for a batch line; ``GET /v1/models`` reports both models with
  their workers and queues;
- killing the one worker of a model leaves that model's jobs (single and batch lines) queued while
  the other model's run, flags the model (``no_live_workers``), and the jobs finish, once each,
  when a worker for it starts again.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from models.checkpoint.revision import checkpoint_revision
from tests.worker.stack import ROOT, TINY_INTERNLM2, Stack, build_stack, destroy_stack

pytestmark = [pytest.mark.services, pytest.mark.slow]

TINY_QWEN2 = ROOT / "tests" / "data" / "conformance" / "models" / "internvl2-qwen2"
MODELS = {"internlm2": str(TINY_INTERNLM2), "qwen2": {"checkpoint": str(TINY_QWEN2), "max_new_tokens": 64}}
# Heartbeats every 0.5 s; a worker silent for 6 s is gone (room for a loaded 2-core machine).
FAST = {"heartbeat_seconds": 0.5, "worker_dead_seconds": 6.0, "sweep_interval_seconds": 1.0}
PROMPTS = ["Write a haiku about GPUs.", "Name three colours."]
GEN = {"max_new_tokens": 12, "do_sample": False}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = build_stack(tmp_path_factory.mktemp("models-fleet"), models=MODELS, default_model="internlm2",
                     **FAST)
    try:
        # Both load at once; the InternLM2 worker also runs the io queue and the scheduler.
        st.start_worker(queues="gpu,io", beat=True, wait=False, worker_model="internlm2")
        st.start_worker(queues="gpu", wait=False, worker_model="qwen2")
        for w in st.workers:
            st.wait_ready(w)
        yield st
    finally:
        for w in st.workers:  # nothing left to finish: no warm shutdown to wait for
            st.stop_worker(w, signal.SIGKILL)
        destroy_stack(st)


@pytest.fixture(scope="module")
def alone() -> dict[str, list[str]]:
    """Each checkpoint's answers to PROMPTS from its engine run alone in this process."""
    import torch

    from models.engine import Engine
    from models.generation import GenerationParams

    torch.set_num_threads(1)
    out = {}
    for name, folder in (("internlm2", TINY_INTERNLM2), ("qwen2", TINY_QWEN2)):
        engine = Engine.load(folder, device="cpu", dtype="float32")
        params = GenerationParams(max_new_tokens=GEN["max_new_tokens"])
        out[name] = [engine.chat(p, params=params).text for p in PROMPTS]
        del engine
    assert out["internlm2"] != out["qwen2"]  # else the test could not tell the models apart
    return out


REVISION = {"internlm2": checkpoint_revision(TINY_INTERNLM2), "qwen2": checkpoint_revision(TINY_QWEN2)}


def models_view(stack: Stack) -> dict[str, dict[str, Any]]:
    with stack.client() as c:
        r = c.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["default_model"] == "internlm2"
    return {m["id"]: m for m in body["data"]}


def check_answered(stack: Stack, job: dict[str, Any], model: str, prompt_index: int,
                   alone: dict[str, list[str]]) -> None:
    done = stack.wait(job["id"], timeout=90)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["attempts"] == 1, done  # ran once
    assert done["model"] == model and done["model_revision"] == REVISION[model]
    assert done["output"]["text"] == alone[model][prompt_index]


def test_each_job_is_answered_by_the_model_it_named(stack: Stack, alone: dict[str, list[str]]) -> None:
    submitted = []
    for i, prompt in enumerate(PROMPTS):
        for model in (None, "internlm2", "qwen2"):
            body: dict[str, Any] = {"prompts": [prompt], "generation": GEN}
            if model is not None:
                body["model"] = model
            submitted.append((stack.submit(body), model or "internlm2", i))
    assert {j["model"] for j, _m, _i in submitted} == {"internlm2", "qwen2"}  # recorded at submission
    for job, model, i in submitted:
        check_answered(stack, job, model, i, alone)
    with stack.client() as c:
        # the checkpoint as configured names its model too (as OpenAI clients send it)
        r = c.post("/v1/jobs", json={"prompts": [PROMPTS[0]], "generation": GEN, "model": str(TINY_QWEN2)})
        assert r.status_code == 202 and r.json()["model"] == "qwen2"
    check_answered(stack, r.json(), "qwen2", 0, alone)


def test_an_unknown_model_is_refused_at_submission(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"prompts": ["Hi"], "model": "internvl2-76b"})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "unknown_model"
        assert "internlm2, qwen2" in r.json()["detail"]
        r = c.post("/v1/batches", json={"jobs": [{"prompts": ["Hi"]}, {"prompts": ["Hi"], "model": "nope"}]})
        assert r.status_code == 422 and r.json()["code"] == "unknown_model", r.text
        too_long = {"max_new_tokens": 65}  # qwen2's limit is 64
        r = c.post("/v1/jobs", json={"prompts": ["Hi"], "model": "qwen2", "generation": too_long})
        assert r.status_code == 422 and r.json()["code"] == "exceeds_model_limit", r.text


def test_models_reports_both_models_workers_and_queues(stack: Stack) -> None:
    view = models_view(stack)
    assert set(view) == {"internlm2", "qwen2"}
    for name, m in view.items():
        assert m["status"] == "available" and m["live_workers"] == 1, m
        assert m["queue"] == f"gpu.{name}" and m["queued_jobs"] == 0 and m["queue_messages"] == 0
        assert m["revisions"] == [REVISION[name]] and m["workers"][0]["model_revision"] == REVISION[name]
        assert m["slots"] == m["free_slots"] > 0 and m["estimated_wait_seconds"] == 0.0
        assert m["oldest_queued_at"] is None
    assert view["internlm2"]["default"] and not view["qwen2"]["default"]
    assert view["qwen2"]["limits"] == {"max_new_tokens": 64}


def test_a_model_without_workers_keeps_its_jobs_until_one_starts(stack: Stack,
                                                                 alone: dict[str, list[str]]) -> None:
    qwen_worker = stack.workers[1]
    stack.stop_worker(qwen_worker, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while models_view(stack)["qwen2"]["status"] != "no_live_workers":  # its heartbeat goes stale
        assert time.monotonic() < deadline, models_view(stack)
        time.sleep(0.5)
    waiting = [stack.submit({"prompts": [p], "generation": GEN, "model": "qwen2"}) for p in PROMPTS]
    with stack.client() as c:
        r = c.post("/v1/batches", json={"jobs": [
            {"prompts": [PROMPTS[1]], "custom_id": "a"},
            {"prompts": [PROMPTS[0]], "custom_id": "b", "model": "qwen2"}], "defaults": {"generation": GEN}})
        assert r.status_code == 202, r.text
        batch = r.json()
        listed = c.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["data"]
        lines = {j["custom_id"]: j for j in listed}
    # The other model's line runs meanwhile: one model's backlog does not hold another's.
    check_answered(stack, lines["a"], "internlm2", 1, alone)
    time.sleep(2.0)
    for job in [*waiting, lines["b"]]:
        assert stack.get(job["id"])["status"] == "queued"
    view = models_view(stack)
    assert view["qwen2"]["status"] == "no_live_workers" and view["qwen2"]["live_workers"] == 0
    assert view["qwen2"]["queued_jobs"] == 3 and view["qwen2"]["oldest_queued_seconds"] >= 2.0
    assert view["qwen2"]["estimated_wait_seconds"] is None
    assert view["internlm2"]["status"] == "available"
    stack.start_worker(queues="gpu", worker_model="qwen2")
    for job, i in zip(waiting, range(len(PROMPTS)), strict=True):
        check_answered(stack, job, "qwen2", i, alone)
    check_answered(stack, lines["b"], "qwen2", 0, alone)
    assert stack.wait_batch(batch["id"], timeout=30)["counts"]["succeeded"] == 2
    assert models_view(stack)["qwen2"]["status"] == "available"
    # Every message reached its own model's queue: no worker was handed another model's job.
    assert "left for that model's workers" not in stack.logs(tail=1_000_000)
