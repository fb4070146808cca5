"""What a finished job records: the output and metrics JSON, and how an exception becomes a job
error. Pure functions; the pipeline passes the results to ``JobService.succeed`` / ``fail``.

Error mapping happens in one place (:func:`job_error`): ``core.errors.as_captionq_error`` adopts
the typed errors of ``storage`` and ``models`` by their ``code``/``retryable`` (media_not_found,
media_unreadable, media_too_large, unsupported_media, context_too_long, out_of_memory …), a Celery
soft time limit becomes ``timeout``, and anything unexpected becomes ``internal``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from core.errors import CaptionqError, JobTimeout, TransientError, as_captionq_error


@dataclass
class RoundResult:
    prompt: str
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    has_json: bool = False
    json: Any = None
    logprobs: list[dict[str, Any]] | None = None
    vision_tiles: int = 0  # tiles the ViT encoded for this round (0: features reused)


@dataclass
class JobOutcome:
    rounds: list[RoundResult] = field(default_factory=list)
    boxes: list[dict[str, Any]] | None = None
    # Seconds from handing requests to the batcher to their results (waiting for a batch + running
    # it), summed over rounds: what a job's run_seconds spent in the model, the rest is service.
    engine_seconds: float = 0.0

    @property
    def text(self) -> str:
        return self.rounds[-1].text if self.rounds else ""


@dataclass
class TasksOutcome:
    """A job with several tasks (jobs.tasks): each task's outcome, in the request's order.
    ``engine_seconds``: wall time from the first request to the last result (tasks overlap)."""

    tasks: dict[str, JobOutcome]
    engine_seconds: float = 0.0


def output_json(outcome: JobOutcome | TasksOutcome) -> dict[str, Any]:
    """The job's output; of a job with tasks ``{"tasks": {name: output}}``, each task's output
    what a job with its fields alone would record."""
    if isinstance(outcome, TasksOutcome):
        return {"tasks": {name: output_json(o) for name, o in outcome.tasks.items()}}
    out: dict[str, Any] = {
        "text": outcome.text,
        "rounds": [_round_json(r) for r in outcome.rounds],
    }
    last = outcome.rounds[-1] if outcome.rounds else None
    if last is not None and last.has_json:  # the final answer's parsed value (a JSON format)
        out["json"] = last.json
    if outcome.boxes is not None:
        out["boxes"] = outcome.boxes
    return out


def _round_json(r: RoundResult) -> dict[str, Any]:
    """A round as the job output shows it; ``json`` only when a JSON format was asked and the
    grammar finished, ``logprobs`` only when asked."""
    out: dict[str, Any] = {"prompt": r.prompt, "text": r.text, "finish_reason": r.finish_reason}
    if r.has_json:
        out["json"] = r.json
    if r.logprobs is not None:
        out["logprobs"] = r.logprobs
    return out


def metrics_json(outcome: JobOutcome | TasksOutcome, *, tiles: int, frames: int, model: str,
                 prepare_seconds: float | None = None, images: int | None = None) -> dict[str, Any]:
    """Per-job metrics (``queued_seconds`` / ``run_seconds`` are added by ``JobService``).
    Tokens are summed over rounds: each round re-reads the conversation so far. A job with
    tasks sums them over its tasks too and adds ``tasks: {name: {input_tokens, output_tokens,
    finish_reason}}``; its ``finish_reason`` is the first task's that did not stop, else
    ``stop``. ``vision_tiles``: tiles the ViT encoded for the job (its media once, however many
    answers, unless the features were evicted in between). Usage (jobs/usage.py) adds up
    ``images``, ``frames``, ``tiles``, the tokens and ``engine_seconds``."""
    rounds = [r for o in outcome.tasks.values() for r in o.rounds] if isinstance(outcome, TasksOutcome) \
        else outcome.rounds
    m: dict[str, Any] = {
        **({"images": images} if images is not None else {}),
        "tiles": tiles,
        "frames": frames,
        "input_tokens": sum(r.input_tokens for r in rounds),
        "output_tokens": sum(r.output_tokens for r in rounds),
        "model": model,
        "finish_reason": rounds[-1].finish_reason if rounds else None,
        "vision_tiles": sum(r.vision_tiles for r in rounds),
    }
    if isinstance(outcome, TasksOutcome):
        m["tasks"] = {name: _task_metrics(o) for name, o in outcome.tasks.items()}
        m["finish_reason"] = next((t["finish_reason"] for t in m["tasks"].values()
                                   if t["finish_reason"] != "stop"), "stop")
    if prepare_seconds is not None:
        m["prepare_seconds"] = round(prepare_seconds, 3)
    m["engine_seconds"] = round(outcome.engine_seconds, 4)
    return m


def _task_metrics(o: JobOutcome) -> dict[str, Any]:
    return {"input_tokens": sum(r.input_tokens for r in o.rounds),
            "output_tokens": sum(r.output_tokens for r in o.rounds),
            "finish_reason": o.rounds[-1].finish_reason if o.rounds else None}


def job_error(exc: BaseException) -> CaptionqError:
    """The job error for any exception raised while running a job."""
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
        return JobTimeout("the job ran past its time limit")
    if _is_database_outage(exc):
        return TransientError(f"database unavailable: {type(exc).__name__}")
    return as_captionq_error(exc)


def _is_database_outage(exc: BaseException) -> bool:
    try:
        from sqlalchemy.exc import DBAPIError, OperationalError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def retry_countdown(retries: int, *, base: float = 2.0, cap: float = 120.0) -> float:
    """Seconds before the next delivery after a transient failure: exponential with full jitter
    (``retries`` = Celery retries so far), at least 1 s."""
    return max(1.0, random.uniform(0, min(cap, base * (2 ** max(0, retries)))))
