"""Several tasks per job: independent prompts or conversations over the same media.

    "tasks": [{"name": "caption", "prompts": ["Describe the image."]},
              {"name": "tags", "messages": [{"role": "user", "content": "List tags."}],
               "generation": {"max_new_tokens": 32}},
              {"name": "boxes", "task": "grounding", "prompts": ["the dog"]}]

Each task answers exactly what a job with its fields alone would answer: ``prompts`` are the
rounds of one conversation (or grounding phrases with ``"task": "grounding"``), like a job's
``prompts``; ``messages`` is a conversation written out (user, assistant, …, user), whose earlier
turns become the history of the last user message; ``generation`` overrides the job's field by
field. The worker fetches, decodes and tiles the media once and runs the ViT once for all tasks
(models.vision_cache); the job's output is ``{"tasks": {name: <that job's output>}}``.

Judged at submission, each with a stable ``code`` (422 problem+json):

- ``tasks_empty``: ``tasks`` is an empty list; ``too_many_tasks``: more than :data:`MAX_TASKS`;
- ``tasks_conflict``: ``tasks`` together with a top-level ``prompts``, ``history`` or ``task``;
- ``duplicate_task_name``: two tasks with one name (names key the output);
- ``invalid_task``: a task with both or neither of ``prompts`` and ``messages``;
- ``invalid_messages``: ``messages`` that do not alternate user/assistant from a user message to
  a user message, or messages in a grounding task;
- the usual field codes for what a task holds (blank prompts, bad ``generation``,
  ``context_too_long`` per task).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from jobs import formats
from jobs.requests import (
    BOUNDARY_TOKENS,
    MAX_CHARS_PER_TOKEN,
    TOKENS_PER_TILE,
    Generation,
    error,
    pydantic_errors,
)

MAX_TASKS = 16
#: top-level fields a job with tasks leaves to its tasks
TASK_FIELDS = ("prompts", "history", "task")


def check_shape(raw: Mapping[str, Any], prefix: list[Any]) -> list[dict[str, Any]]:
    """What is wrong with ``tasks`` before the schema looks at each one."""
    tasks = raw.get("tasks")
    if tasks is None or not isinstance(tasks, list):
        return []  # absent, or the schema's type error
    loc = [*prefix, "tasks"]
    if not tasks:
        return [error(loc, "tasks must hold at least one task", "tasks_empty")]
    if len(tasks) > MAX_TASKS:
        return [error(loc, f"{len(tasks)} tasks; at most {MAX_TASKS} per job", "too_many_tasks")]
    return [error([*prefix, f], f"{f!r} cannot be given together with 'tasks' (each task has its own)",
                  "tasks_conflict") for f in TASK_FIELDS if f in raw]


def normalize(req: dict[str, Any], prefix: list[Any]) -> list[dict[str, Any]]:
    """Normalise ``req["tasks"]`` in place (defaults filled in, ``generation`` merged over the
    job's and validated) and return what is wrong. Drops the top-level ``prompts``."""
    del req["prompts"]
    errs: list[dict[str, Any]] = []
    seen: set[str] = set()
    has_image = any(m["type"] == "image" for m in req["media"])
    out = []
    for i, task in enumerate(req["tasks"]):
        loc = [*prefix, "tasks", i]
        if task["name"] in seen:
            errs.append(error([*loc, "name"], f"task name {task['name']!r} is used twice",
                              "duplicate_task_name"))
        seen.add(task["name"])
        clean: dict[str, Any] = {"name": task["name"], "task": task["task"]}
        if (task["prompts"] is None) == (task["messages"] is None):
            errs.append(error(loc, "a task takes either 'prompts' or 'messages'", "invalid_task"))
        elif task["prompts"] is not None:
            clean["prompts"] = task["prompts"]
            errs += [error([*loc, "prompts", j], "prompt must not be blank")
                     for j, p in enumerate(task["prompts"]) if not p.strip()]
        else:
            clean["messages"] = task["messages"]
            errs += _check_messages(task["messages"], task["task"], [*loc, "messages"])
        if task["task"] == "grounding" and not has_image:
            errs.append(error([*loc, "task"], "task 'grounding' needs at least one image"))
        if task["generation"] is not None:
            gen, gen_errs = _merged_generation(req["generation"], task["generation"], [*loc, "generation"])
            errs += gen_errs
            clean["generation"] = gen
        out.append(clean)
    req["tasks"] = out
    return errs


def _check_messages(messages: list[dict[str, Any]], kind: str, loc: list[Any]) -> list[dict[str, Any]]:
    if kind == "grounding":
        return [error(loc, "a grounding task takes 'prompts' (the phrases), not messages",
                      "invalid_messages")]
    for j, m in enumerate(messages):
        want = "user" if j % 2 == 0 else "assistant"
        if m["role"] != want:
            return [error([*loc, j, "role"], f"expected a {want} message: messages alternate user and "
                          "assistant, starting with user", "invalid_messages")]
        if want == "user" and not m["content"].strip():
            return [error([*loc, j, "content"], "a user message must not be blank", "invalid_messages")]
    if messages[-1]["role"] != "user":
        return [error([*loc, len(messages) - 1], "the last message must be the user's", "invalid_messages")]
    return []


def _merged_generation(job: dict[str, Any], overrides: dict[str, Any],
                       loc: list[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    merged = {**job, **overrides}  # field by field: a task's response_format replaces the job's whole
    try:
        gen = Generation.model_validate(merged).model_dump()
    except ValidationError as exc:
        return merged, pydantic_errors(exc, loc)
    return gen, formats.check_generation(gen, loc)


def task_texts(task: Mapping[str, Any]) -> list[str]:
    """Every text a task puts into its conversations."""
    if "messages" in task:
        return [m["content"] for m in task["messages"]]
    return list(task["prompts"])


def check_context(req: dict[str, Any], prefix: list[Any], context: int | None,
                  count_tokens: Callable[[str], int] | None) -> list[dict[str, Any]]:
    """``context_too_long`` per task against the served model's ``context``: the lower bound of
    jobs.requests, for each task alone."""
    if context is None:
        return []
    visual = TOKENS_PER_TILE * sum(1 if m["type"] == "image" else m["num_frames"] for m in req["media"])
    errs = []
    for i, task in enumerate(req["tasks"]):
        texts = task_texts(task)
        if count_tokens is not None:
            text = sum(max(0, count_tokens(t) - BOUNDARY_TOKENS) for t in texts)
        else:
            text = math.ceil(sum(len(t) for t in texts) / MAX_CHARS_PER_TOKEN)
        need = visual + text + (task.get("generation") or req["generation"])["max_new_tokens"]
        if need > context:
            errs.append(error(
                [*prefix, "tasks", i], f"task {task['name']!r} needs at least {need} tokens (images/frames "
                f"at 256 tokens each, its texts, and max_new_tokens) but the model's context is "
                f"{context}", "context_too_long"))
    return errs


def job_tasks(req: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tasks of a stored request, each as the job fields it stands for: ``name``, ``task``,
    ``prompts`` (the rounds to run), ``history`` (from ``messages``; the first user message as
    written, see :func:`worker.pipeline`), ``generation`` (the job's unless the task's own)."""
    out = []
    for task in req.get("tasks") or []:
        spec: dict[str, Any] = {"name": task["name"], "task": task.get("task", "chat"),
                                "generation": task.get("generation") or req.get("generation") or {}}
        if "messages" in task:
            msgs = task["messages"]
            spec["history"] = [(msgs[j]["content"], msgs[j + 1]["content"])
                               for j in range(0, len(msgs) - 1, 2)]
            spec["prompts"] = [msgs[-1]["content"]]
        else:
            spec["prompts"] = list(task["prompts"])
        out.append(spec)
    return out
