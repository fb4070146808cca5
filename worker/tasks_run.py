"""Run a job's tasks (:mod:`jobs.tasks`): several independent conversations over media prepared
once (ARCHITECTURE.md, "Several tasks per job").

Every task's requests carry the job's ``vision_key`` and the same ``pixel_values`` tensor, so the
engine runs the ViT for the first request that reaches it and reuses those features for every
other round, task and grounding phrase (:mod:`models.vision_cache`). The tasks run side by side:
the first round of every chat task and every phrase of every grounding task go to the batcher at
once (they can share a batch), and each chat task's next round is submitted as soon as its
previous one is answered. Each request is built exactly as the job with that task's fields alone
would build it (:func:`worker.pipeline.chat_request`), so each task answers what that job would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from jobs.tasks import job_tasks
from models.engine import ChatRequest, ChatResult, GenerationParams
from models.grounding import grounding_prompt
from models.prompts import prepare_question
from worker.live import JobWatch, Stopped
from worker.prepare import PreparedInput, PreparedItem, layout
from worker.record import JobOutcome, RoundResult, TasksOutcome


@dataclass
class _Task:
    name: str
    grounding: bool
    prompts: list[str]
    params: GenerationParams
    system: str | None
    prep: PreparedInput | None = None  # chat: the first round's question and the tiles
    history: list[tuple[str, str]] | None = None
    results: dict[int, ChatResult] = field(default_factory=dict)


def run_tasks(req: dict[str, Any], items: list[PreparedItem], watch: JobWatch,
              submit: Callable[[ChatRequest], Future[ChatResult]], vision_key: str,
              tensor: Callable[[PreparedInput], Any]) -> TasksOutcome:
    """Every task of ``req`` to its end (``Stopped`` on a cancel or the time limit; a failed
    request fails the job and drops the other tasks' requests)."""
    from worker.pipeline import chat_request, collect_boxes, generation_params, round_result

    mode = req.get("image_mode") or "separate"
    tasks = [_task(spec, items, mode, generation_params) for spec in job_tasks(req)]
    # one layout gives the tiles of every task (they do not depend on the prompt): one tensor
    pixel_values = tensor(layout(items, "", mode))
    aborted = threading.Event()

    def should_cancel() -> bool:
        return aborted.is_set() or watch.should_cancel()

    pending: dict[Future[ChatResult], tuple[_Task, int]] = {}

    def send(task: _Task, index: int) -> None:
        if task.grounding:
            prep = layout(items, grounding_prompt(task.prompts[index]), mode)
            request = chat_request(prep, 0, "", pixel_values, task.params, task.system, None,
                                   should_cancel, vision_key)
        else:
            assert task.prep is not None
            watch.new_round(index, task.name)
            request = chat_request(task.prep, index, task.prompts[index], pixel_values, task.params,
                                   task.system, task.history, should_cancel, vision_key,
                                   on_token=watch.sink(task.name))
        pending[submit(request)] = (task, index)

    started = time.monotonic()
    try:
        for task in tasks:
            for index in range(len(task.prompts) if task.grounding else 1):
                send(task, index)
        while pending:
            for future in watch.wait_any(list(pending)):
                task, index = pending.pop(future)
                result = future.result()
                if result.finish_reason == "canceled":
                    raise Stopped(watch.reason or "cancel")
                task.results[index] = result
                if not task.grounding:
                    task.history = result.history
                    if index + 1 < len(task.prompts):
                        send(task, index + 1)
    except BaseException:
        aborted.set()  # the engine drops the requests still running at its next step
        raise
    outcomes: dict[str, JobOutcome] = {}
    for task in tasks:
        rounds = [round_result(p, task.results[i]) for i, p in enumerate(task.prompts)]
        boxes = collect_boxes(task.prompts, [r.text for r in rounds], items) if task.grounding else None
        outcomes[task.name] = JobOutcome(rounds=rounds, boxes=boxes)
    return TasksOutcome(outcomes, engine_seconds=time.monotonic() - started)


def _task(spec: dict[str, Any], items: list[PreparedItem], mode: str,
          generation_params: Callable[[dict[str, Any]], GenerationParams]) -> _Task:
    gen = spec["generation"]
    task = _Task(spec["name"], spec["task"] == "grounding", spec["prompts"], generation_params(gen),
                 gen.get("system_prompt"))
    if task.grounding:
        return task
    history = spec.get("history")
    if not history:  # the first prompt is laid out like a job's first round
        task.prep = layout(items, task.prompts[0], mode)
        return task
    # messages: the first user message is what the job's first round asked (laid out, with
    # chat()'s automatic prefix), the last one is asked as is after the history
    first = layout(items, history[0][0], mode)
    asked = prepare_question(first.question, has_images=first.pixel_values is not None)
    task.history = [(asked, history[0][1]), *history[1:]]
    task.prep = PreparedInput(task.prompts[0], first.pixel_values, first.num_patches_list, first.items)
    return task


__all__ = ["RoundResult", "run_tasks"]
