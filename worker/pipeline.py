"""The path of one caption job inside the worker (ARCHITECTURE.md, "The path of one job").

    claim ─► fetch + decode + tile/sample ─► question ─► batcher (round by round) ─► record

1. **claim** — ``JobService.start``: queued → running, ``attempts`` + 1 in SQL (a redelivered
   message may take over a job left ``running`` by a dead worker). None — canceled, finished,
   already running elsewhere, attempt cap reached (``worker_lost``), or past its TTL (failed
   ``expired`` there, without running) — ends the task.
2. **prepare** (:mod:`worker.prepare`) on this task thread, overlapping other jobs' GPU work:
   storage retries transient download errors itself with backoff; what is still transient after
   that becomes a Celery retry (:class:`RetryLater`); missing / unreadable / too large /
   unsupported media fail at once with their codes.
3. **infer** — each round is a ``ChatRequest`` handed to the process's one :class:`Batcher`,
   which joins it with other jobs' requests; the token budget is checked on submit
   (``context_too_long`` before any model work). Rounds run in order, each round's answer in
   the next round's history, exactly like repeated ``chat(..., history=history)`` calls.
   Grounding runs one independent request per phrase (all submitted at once). A job with
   several tasks runs them side by side (:mod:`worker.tasks_run`). All requests of a job that
   makes more than one carry its ``vision_key``: the ViT runs once for them (models.vision_cache),
   and the key is released when the job's answers are in.
4. **record** — ``succeed`` / ``fail`` / ``mark_canceled`` with this delivery's ``attempt``: a
   conditional UPDATE, so a redelivered message or a superseded attempt never writes twice.
   A database outage is waited out in place (:func:`record_outcome`), then the job is handed
   back to the broker; a claim the database lost is noticed whether the record returned
   "not applied" or raised (the redelivery takes over a ``queued`` job too).
   Then the live ``done`` event (after the commit), carrying the finished job's JSON.

No database session is open across the download or the inference: every ``JobService`` call is
its own short transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from opentelemetry.trace import SpanKind

from core import logcontext, tracing
from core.db import utcnow
from core.errors import CaptionqError, InternalError, TransientError
from jobs import formats
from jobs.render import job_to_dict
from jobs.service import ClaimedJob
from jobs.tables import Job
from models.engine import ChatRequest, ChatResult, GenerationParams
from models.grounding import grounding_prompt, parse_grounding
from worker import metrics as wmetrics
from worker.live import JobWatch, Stopped, StopReason
from worker.prepare import PreparedInput, PreparedItem, layout, prepare_items
from worker.record import (
    JobOutcome,
    RoundResult,
    TasksOutcome,
    job_error,
    metrics_json,
    output_json,
    retry_countdown,
)
from worker.runtime import Runtime
from worker.tasks_run import run_tasks

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """A transient failure with attempts left: the task re-sends itself after ``countdown`` s.
    The job stays ``running`` in SQL; the next delivery takes it over (``redelivered``)."""

    def __init__(self, error: CaptionqError, countdown: float) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.countdown = countdown


def generation_params(gen: dict[str, Any]) -> GenerationParams:
    fmt = gen.get("response_format")
    return GenerationParams(
        max_new_tokens=int(gen.get("max_new_tokens", 512)), do_sample=bool(gen.get("do_sample", False)),
        temperature=float(gen.get("temperature", 1.0)), top_p=float(gen.get("top_p", 1.0)),
        top_k=int(gen.get("top_k", 0)), repetition_penalty=float(gen.get("repetition_penalty", 1.0)),
        seed=gen.get("seed"),
        grammar=formats.grammar_for(fmt) if fmt else None, json_output=formats.is_json(fmt),
        stop=tuple(gen.get("stop") or ()), logprobs=bool(gen.get("logprobs", False)),
        top_logprobs=int(gen.get("top_logprobs", 0) or 0),
    )


def run_caption_job(rt: Runtime, job_id: str, *, redelivered: bool = False, retries: int = 0) -> str:
    """Run one delivery of ``captionq.caption_job``. Returns what happened (``skipped``,
    ``succeeded``, ``failed``, ``canceled``, ``stopped``) or raises :class:`RetryLater`.

    Observed on the way: its log lines carry the job's ids (:mod:`core.logcontext`), its stages
    are spans of the job's trace (:mod:`core.tracing`) and the worker's metrics count it
    (:mod:`worker.metrics`)."""
    with logcontext.bind(job_id=job_id):
        try:
            outcome = _observed_run(rt, job_id, redelivered, retries)
        except RetryLater:
            wmetrics.job_finished("retry")
            raise
        wmetrics.job_finished(outcome)
        return outcome


def _observed_run(rt: Runtime, job_id: str, redelivered: bool, retries: int) -> str:
    try:
        claimed = rt.jobs.start(job_id, redelivered=redelivered, worker_id=rt.worker_id, served=rt.served)
    except Exception as exc:  # cannot even claim (database down): nothing changed, try later
        err = job_error(exc)
        if err.retryable:
            raise RetryLater(err, retry_countdown(retries)) from exc
        raise
    if claimed is None:
        log.info("job %s: nothing to run (not queued, or taken over)", job_id)
        return "skipped"
    wmetrics.JOBS_STARTED.inc()
    parent = tracing.extract(claimed.trace_context)
    claimed_at = claimed.started_at or utcnow()
    if claimed.attempt == 1:  # later attempts waited for a retry, not only for the broker
        wmetrics.QUEUE_WAIT.observe(max(0.0, (claimed_at - claimed.created_at).total_seconds()))
        tracing.past_span("broker wait", claimed.created_at, claimed_at, parent, captionq__job_id=job_id)
    with logcontext.bind(batch_id=claimed.batch_id, tenant_id=claimed.tenant_id), \
            tracing.attached(parent), \
            tracing.span("captionq.job", kind=SpanKind.CONSUMER, captionq__job_id=job_id,
                         captionq__attempt=claimed.attempt, captionq__batch_id=claimed.batch_id):
        started = time.monotonic()
        try:
            return _claimed_run(rt, claimed, redelivered, retries)
        finally:
            wmetrics.JOB.observe(time.monotonic() - started)


def _claimed_run(rt: Runtime, claimed: ClaimedJob, redelivered: bool, retries: int) -> str:
    job_id = claimed.job_id
    if rt.live is not None:
        rt.live.status(job_id, "running")
    watch = JobWatch(job_id, rt.jobs, rt.live, deadline=time.monotonic() + rt.settings.job_soft_time_limit,
                     poll_now=redelivered, cancels=rt.cancels)
    started = time.monotonic()
    try:
        outcome, items, prepare_seconds = _run(rt, claimed, watch)
    except Stopped as stop:
        return _stopped(rt, claimed, stop.reason)
    except Exception as exc:
        return _failed(rt, claimed, exc, retries)
    finally:
        watch.close()
    metrics = metrics_json(outcome, images=sum(1 for i in items if i.kind == "image"),
                           tiles=sum(i.tiles for i in items), frames=sum(i.frames for i in items),
                           model=rt.engine_info.name, prepare_seconds=prepare_seconds)
    wmetrics.PREPARE.observe(prepare_seconds)
    wmetrics.ENGINE.observe(outcome.engine_seconds)
    with tracing.span("record", captionq__outcome="succeeded"):
        job = record_outcome(rt, claimed, lambda: rt.jobs.succeed_job(job_id, output_json(outcome), metrics,
                                                                      claim=claimed))
    if job is None:
        return _not_recorded(rt, claimed, "result")
    log.info("job %s succeeded in %.2f s (attempt %d, %d tiles, %d+%d tokens)", job_id,
             time.monotonic() - started, claimed.attempt, metrics["tiles"], metrics["input_tokens"],
             metrics["output_tokens"])
    _done(rt, job_id, "succeeded", job)
    return "succeeded"


def _run(rt: Runtime, claimed: ClaimedJob,
         watch: JobWatch) -> tuple[JobOutcome | TasksOutcome, list[PreparedItem], float]:
    req = claimed.request
    watch.check()  # a takeover looks for a cancel requested during the earlier attempt
    t0 = time.monotonic()
    with tracing.span("prepare", captionq__media=len(req.get("media") or [])):
        items = prepare_items(req.get("media") or [], rt.storage, check=watch.check)
    prepare_seconds = time.monotonic() - t0
    watch.check()
    outcome = answer_job(rt.batcher, req, items, watch, f"{claimed.job_id}:{claimed.attempt}")
    return outcome, items, prepare_seconds


def answer_job(batcher: Any, req: dict[str, Any], items: list[PreparedItem], watch: JobWatch,
               job_key: str) -> JobOutcome | TasksOutcome:
    """Every answer of a job whose media is prepared (``items``), from ``batcher``. A job that
    makes more than one request (rounds, phrases, tasks) gives them the vision key ``job_key``
    (its features are kept for all of them) and releases it at the end."""
    prompt_list = list(req.get("prompts") or [])
    many = bool(req.get("tasks")) or len(prompt_list) > 1
    key = job_key if items and many else None
    try:
        if req.get("tasks"):
            return run_tasks(req, items, watch, batcher.submit, job_key, _tensor)
        params = generation_params(req.get("generation") or {})
        system = (req.get("generation") or {}).get("system_prompt")
        mode = req.get("image_mode") or "separate"
        if req.get("task") == "grounding":
            return _grounding(batcher, items, prompt_list, mode, params, watch, system, key)
        history = [(str(q), str(a)) for q, a in req["history"]] if req.get("history") else None
        prep = layout(items, prompt_list[0], mode)
        if history is not None:  # the placeholders are written out in the history / question
            prep = PreparedInput(prompt_list[0], prep.pixel_values, prep.num_patches_list, prep.items)
        return _chat(batcher, prep, prompt_list, params, watch, system, history, key)
    finally:
        if key is not None:
            batcher.release_vision(key)


def _tensor(prep: PreparedInput) -> Any:
    if prep.pixel_values is None:
        return None
    import torch

    return torch.from_numpy(prep.pixel_values)


def round_result(prompt: str, res: ChatResult) -> RoundResult:
    return RoundResult(prompt, res.text, res.finish_reason, res.prompt_tokens, res.output_tokens,
                       has_json=res.has_json, json=res.json, logprobs=res.logprobs,
                       vision_tiles=res.vision_tiles)


def chat_request(prep: PreparedInput, index: int, prompt: str, pixel_values: Any, params: GenerationParams,
                 system: str | None, history: list[tuple[str, str]] | None,
                 should_cancel: Callable[[], bool], vision_key: str | None, *,
                 on_token: Callable[[str], None] | None = None) -> ChatRequest:
    """Round ``index`` of a conversation: the laid-out question first, then the bare prompt with
    the history so far, exactly like repeated ``chat(..., history=history)`` calls."""
    return ChatRequest(
        question=prep.question if index == 0 else prompt, history=history,
        pixel_values=pixel_values, num_patches_list=prep.num_patches_list, params=params,
        on_token=on_token, should_cancel=should_cancel, system_message=system, vision_key=vision_key,
    )


def _chat(batcher: Any, prep: PreparedInput, prompt_list: list[str], params: GenerationParams,
          watch: JobWatch, system: str | None = None,
          history: list[tuple[str, str]] | None = None, key: str | None = None) -> JobOutcome:
    pixel_values = _tensor(prep)
    outcome = JobOutcome()
    for index, prompt in enumerate(prompt_list):
        watch.new_round(index)
        request = chat_request(prep, index, prompt, pixel_values, params, system, history,
                               watch.should_cancel, key, on_token=watch.on_token)
        t0 = time.monotonic()
        with tracing.span("engine", captionq__round=index) as span:
            result = watch.wait(batcher.submit(request))
            if span is not None:
                span.set_attribute("gen_ai.usage.input_tokens", result.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", result.output_tokens)
        outcome.engine_seconds += time.monotonic() - t0
        if result.finish_reason == "canceled":
            raise Stopped(watch.reason or "cancel")
        outcome.rounds.append(round_result(prompt, result))
        history = result.history
    return outcome


def _grounding(batcher: Any, items: list[PreparedItem], phrases: list[str], mode: str,
               params: GenerationParams, watch: JobWatch, system: str | None = None,
               key: str | None = None) -> JobOutcome:
    """One independent request per phrase (no history between them), all in the batcher at
    once; boxes are parsed into pixels of each original (upright) image."""
    futures = []
    pixel_values = None
    t0 = time.monotonic()
    for phrase in phrases:
        prep = layout(items, grounding_prompt(phrase), mode)
        if pixel_values is None:
            pixel_values = _tensor(prep)
        futures.append(batcher.submit(chat_request(prep, 0, phrase, pixel_values, params, system, None,
                                                      watch.should_cancel, key)))
    with tracing.span("engine", captionq__phrases=len(phrases)):
        results = watch.wait_all(futures)
    if any(r.finish_reason == "canceled" for r in results):
        raise Stopped(watch.reason or "cancel")
    return JobOutcome(rounds=[round_result(p, r) for p, r in zip(phrases, results, strict=True)],
                      boxes=collect_boxes(phrases, [r.text for r in results], items),
                      engine_seconds=time.monotonic() - t0)


def collect_boxes(phrases: list[str], texts: list[str], items: list[PreparedItem]) -> list[dict[str, Any]]:
    """Boxes of every phrase's answer in pixels of the original (upright) images. The parser
    numbers images as the prompt labels them (``Image-1`` …); ``media_index`` is the position
    in the request's ``media`` list. A box without a ``<ref>`` is labelled with its phrase."""
    image_media = [i for i, it in enumerate(items) if it.kind == "image"]
    sizes = [items[i].size for i in image_media] or [(0, 0)]
    boxes: list[dict[str, Any]] = []
    for phrase, text in zip(phrases, texts, strict=True):
        for b in parse_grounding(text, sizes):
            boxes.append({
                "label": b["label"] if b["label"] is not None else phrase,
                "box": b["box"],
                "media_index": image_media[b["media_index"]] if image_media else 0,
            })
    return boxes


def _stopped(rt: Runtime, claimed: ClaimedJob, reason: StopReason) -> str:
    job_id = claimed.job_id
    if reason == "timeout":
        return _record_failure(rt, claimed, "timeout",
                               f"the job ran past its time limit of {rt.settings.job_soft_time_limit} s",
                               retryable=False)
    # ``is_cancel_requested`` is also true when the job stopped being ``running`` under us (the
    # sweeper requeued or failed it): only a cancel the client asked for is recorded as canceled.
    if reason == "cancel" and _cancel_was_requested(rt, claimed) and \
            rt.jobs.mark_canceled(job_id, attempt=claimed.attempt):
        log.info("job %s canceled", job_id)
        _done(rt, job_id, "canceled")
        return "canceled"
    return _not_recorded(rt, claimed, f"stop ({reason})")


def _cancel_was_requested(rt: Runtime, claimed: ClaimedJob) -> bool:
    job = rt.jobs.get(claimed.tenant_id, claimed.job_id)
    return job.status == "running" and bool(job.cancel_requested) and job.attempts == claimed.attempt


def _failed(rt: Runtime, claimed: ClaimedJob, exc: BaseException, retries: int) -> str:
    err = job_error(exc)
    if isinstance(err, InternalError) or err.code == "internal":
        log.error("job %s: unexpected error", claimed.job_id, exc_info=exc)
    if err.retryable and claimed.attempt < rt.settings.max_attempts:
        log.warning("job %s: %s (%s); retrying, attempt %d of %d", claimed.job_id, err.code, err.message,
                    claimed.attempt, rt.settings.max_attempts)
        raise RetryLater(err, retry_countdown(retries)) from exc
    return _record_failure(rt, claimed, err.code, err.message, retryable=err.retryable)


def _record_failure(rt: Runtime, claimed: ClaimedJob, code: str, message: str, *, retryable: bool) -> str:
    with tracing.span("record", captionq__outcome="failed", captionq__error_code=code):
        status = record_outcome(rt, claimed, lambda: rt.jobs.fail(claimed.job_id, code, message, retryable,
                                                                  attempt=claimed.attempt))
    if status is None:
        return _not_recorded(rt, claimed, f"failure {code}")
    log.info("job %s %s: %s: %s", claimed.job_id, status, code, message)
    if status != "queued":
        _done(rt, claimed.job_id, status)
    return status


def _not_recorded(rt: Runtime, claimed: ClaimedJob, what: str) -> str:
    """The outcome did not apply: the job changed meanwhile (canceled, requeued or failed by the
    sweeper — nothing to do) or its claim was lost (see ``JobService.claim_lost``) — then this
    message is delivered again, so that the queued job runs once more instead of waiting for a
    message that no longer exists."""
    if record_outcome(rt, claimed, lambda: rt.jobs.claim_lost(claimed.job_id, claimed.attempt)):
        log.warning("job %s: its claim (attempt %d) was lost by the database; delivering it again",
                    claimed.job_id, claimed.attempt)
        raise RetryLater(TransientError("the job's claim was lost by the database"), 1.0)
    log.info("job %s: %s not recorded (the job changed meanwhile)", claimed.job_id, what)
    return "stopped"


# Waits between tries of recording an outcome while the database is unreachable: about 30 s in
# all, enough for a PostgreSQL restart or failover, short against a job's time limit.
RECORD_BACKOFF = (0.2, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 8.0)

T = TypeVar("T")


def record_outcome(rt: Runtime, claimed: ClaimedJob, write: Callable[[], T],
                   backoff: Sequence[float] = RECORD_BACKOFF) -> T:
    """Run ``write`` (record the job's outcome, or ask whether its claim was lost), retrying it in
    place while the database is unreachable. The result exists only in this process: a task that
    raised here would be acked and the finished job left ``running`` until the sweeper's time
    limit. If the database stays out of reach, the job is handed back instead: a redelivery of
    this message (:class:`RetryLater`) takes the job over, whether it is still ``running`` or
    its claim was lost and it is ``queued`` again (``redelivered`` claims both)."""
    for wait in (*backoff, None):
        try:
            return write()
        except Exception as exc:
            err = job_error(exc)
            if not err.retryable:
                raise
            if wait is None:
                log.warning("job %s: cannot record its outcome (%s); delivering it again", claimed.job_id,
                            err.message)
                raise RetryLater(err, 1.0) from exc
            log.warning("job %s: recording its outcome failed (%s); trying again in %.1f s",
                        claimed.job_id, err.message, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _done(rt: Runtime, job_id: str, status: str, job: Job | None = None) -> None:
    """Tell live listeners the job ended; with the committed row (``job``) they need not read it
    back from the database."""
    if rt.live is not None:
        rt.live.done(job_id, status, job_to_dict(job) if job is not None else None)
