"""``GET /v1/jobs/{id}/events``: Server-Sent Events for one job (API.md).

Events, then the stream closes:

- ``status`` — ``{"id", "status"}``: first the job's status when the stream opens, then each change;
- ``token`` — ``{"text": delta, "round": r}``: text generated while the job runs (round ``r`` of a
  multi-round job; a new round starts from empty text). A job with ``tasks`` adds ``"task": name``:
  each task is its own stream of rounds, and the tasks' events interleave;
- ``done`` — the final Job JSON (as ``GET /v1/jobs/{id}``).

Sources: with Redis (``settings.events_redis_url``) the worker's live events (:mod:`jobs.live`),
read gap-free (subscribe and wait for Redis to confirm it, then read the round's text so far and
the job, then trim each delta by its ``offset``). A live ``status`` is passed on as announced; the
worker's ``done`` carries the committed Job JSON, sent as the ``done`` event without reading the
database (a ``done`` without it, or a terminal ``status``, is read from the database). The
database is polled too, every ``DB_POLL_REDIS`` seconds, so a state change the worker did not
announce (a cancel of a queued job, the sweeper's expiry) still ends the stream.
Without Redis (local mode) the database alone, every ``DB_POLL_LOCAL`` seconds: ``status`` and the
growth of ``partial_text`` (which the worker stores about twice a second; of a job with tasks,
the first chat task's text, tagged with its name).

Tenant-scoped like every route: another tenant's job id answers 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from api import waiting
from api.context import AppContext, get_ctx, tenant
from api.live_hub import LOST, Subscription, hub_for
from jobs import live
from jobs.render import job_to_dict
from jobs.states import TERMINAL

router = APIRouter(prefix="/v1", tags=["jobs"])

Tenant = Annotated[str, Depends(tenant)]

DB_POLL_REDIS = 1.0
DB_POLL_LOCAL = 0.5
KEEPALIVE_SECONDS = 15.0


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


class TextTracker:
    """What this stream already sent of the current round's text; turns full texts or
    (offset, delta) pairs into the new part only."""

    def __init__(self) -> None:
        self.round = 0
        self.sent = ""

    def from_full(self, text: str, round_index: int | None = None) -> str | None:
        """A full text of the round (``round_index`` None: unknown, guess from the text)."""
        if round_index is None:
            round_index = self.round if text.startswith(self.sent) else self.round + 1
        if round_index < self.round:
            return None
        if round_index > self.round:
            self.round, self.sent = round_index, ""
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return None
        delta, self.sent = text[len(self.sent):], text
        return delta

    def from_delta(self, round_index: int, offset: int, delta: str) -> str | None:
        if round_index < self.round:
            return None
        if round_index > self.round:
            self.round, self.sent = round_index, ""
        end = offset + len(delta)
        if end <= len(self.sent):
            return None  # already sent (it was in the text read when the stream opened)
        if offset > len(self.sent):
            return None  # a gap cannot happen with subscribe-then-read; never send misaligned text
        new = delta[len(self.sent) - offset:]
        self.sent += new
        return new


@router.get("/jobs/{job_id}/events", summary="Stream a job's status and tokens (Server-Sent Events)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "events `status`, `token`, `done`, then the stream ends"}})
async def job_events(request: Request, job_id: str, tenant_id: Tenant) -> StreamingResponse:
    ctx = get_ctx(request)
    url = ctx.settings.events_redis_url
    sub = await waiting.subscribe(request, ctx, job_id) if url else None
    raw_text: bytes | None = None
    try:
        # One read, after subscribing (no gap), answers 404 before the stream starts and is the
        # stream's first state; the round's text so far is read from Redis meanwhile.
        if sub is not None and url:
            job, raw_text = await asyncio.gather(_job(ctx, tenant_id, job_id),
                                                 _text_so_far(request, url, job_id))
        else:
            job = await _job(ctx, tenant_id, job_id)
    except BaseException:
        if sub is not None:
            await _close(sub)
        raise
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if sub is None:
        return StreamingResponse(_db_stream(request, ctx, tenant_id, job), media_type="text/event-stream",
                                 headers=headers)
    return _LiveStream(_redis_stream(request, ctx, tenant_id, job, sub, raw_text), sub,
                       media_type="text/event-stream", headers=headers)


class _LiveStream(StreamingResponse):
    """Closes the subscription however the response ends — also when the client left before the
    stream's generator ever ran (its own ``finally`` would then never run)."""

    def __init__(self, content: AsyncIterator[bytes], sub: Subscription, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._sub = sub

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await _close(self._sub)


async def _job(ctx: AppContext, tenant_id: str, job_id: str) -> Any:
    return await to_thread.run_sync(ctx.service.get, tenant_id, job_id)


def _status(job: Any) -> bytes:
    return sse("status", {"id": job.id, "status": job.status})


def _changes(job: Any, last_status: str | None) -> list[bytes]:
    """What a fresh look at the job adds to the stream: a ``status`` event when its status is
    not ``last_status`` (None: the first look), and ``done`` when it is terminal."""
    events = [] if job.status == last_status else [_status(job)]
    if job.status in TERMINAL:
        events.append(sse("done", job_to_dict(job)))
    return events


def _token(delta: str, round_index: int, task: str | None = None) -> bytes:
    data: dict[str, Any] = {"text": delta, "round": round_index}
    if task is not None:
        data["task"] = task
    return sse("token", data)


def _first_task(job: Any) -> str | None:
    """The task whose text ``partial_text`` holds (jobs.tasks: the first that streams), None for
    a job without tasks."""
    tasks = (job.request or {}).get("tasks") if isinstance(job.request, dict) else None
    streamed = [t for t in tasks or [] if t.get("task", "chat") != "grounding"]  # grounding does not stream
    return str(streamed[0]["name"]) if streamed else None


def _snapshot_tokens(raw: bytes, trackers: dict[str | None, TextTracker]) -> list[bytes]:
    """The text so far (live.text_key) as token events: one stream, or one per task."""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        snap = json.loads(raw)
        streams = snap["tasks"].items() if "tasks" in snap else [(None, snap)]
        out = []
        for task, st in streams:
            tracker = trackers.setdefault(task, TextTracker())
            delta = tracker.from_full(str(st["text"]), int(st["round"]))
            if delta:
                out.append(_token(delta, tracker.round, task))
        return out
    return []


async def _db_stream(request: Request, ctx: AppContext, tenant_id: str, job: Any) -> AsyncIterator[bytes]:
    status: str | None = None
    text = TextTracker()
    task = _first_task(job)
    last_sent = time.monotonic()
    while True:
        for change in _changes(job, status):
            yield change
        status = job.status
        if job.status in TERMINAL:
            return
        if job.status == "running" and job.partial_text:
            delta = text.from_full(job.partial_text)
            if delta:
                yield _token(delta, text.round, task)
                last_sent = time.monotonic()
        if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(DB_POLL_LOCAL)
        if await request.is_disconnected():
            return
        job = await _job(ctx, tenant_id, job.id)


async def _text_so_far(request: Request, url: str, job_id: str) -> bytes | None:
    """The round's text so far, through the app's shared Redis connection (read after
    subscribing: no gap)."""
    hub = hub_for(request, url)
    try:
        return await hub.get(live.text_key(job_id)) if hub is not None else None
    except Exception:
        return None


async def _close(sub: Subscription) -> None:
    with contextlib.suppress(Exception):
        await sub.close()


def _live_changes(job_id: str, data: dict[str, Any],
                  last_status: str | None) -> tuple[list[bytes], str] | None:
    """What a live ``status``/``done`` event adds without a database read, and the status after
    it: a non-terminal status as announced; a terminal one only with the committed Job JSON the
    worker sends along. None: read the database instead."""
    job = data.get("job")
    if isinstance(job, dict):
        status, final = job.get("status"), [sse("done", job)]
        if status not in TERMINAL:
            return None
    else:
        status, final = data.get("status"), []
        if not isinstance(status, str) or status in TERMINAL:
            return None
    events = [] if status == last_status else [sse("status", {"id": job_id, "status": status})]
    return [*events, *final], str(status)


async def _redis_stream(request: Request, ctx: AppContext, tenant_id: str, job: Any,
                        sub: Subscription, raw_text: bytes | None) -> AsyncIterator[bytes]:
    job_id = job.id
    try:
        for change in _changes(job, None):
            yield change
        status = job.status
        if job.status in TERMINAL:
            return
        trackers: dict[str | None, TextTracker] = {}  # one per task (None: the job's one stream)
        if raw_text and job.status == "running":
            for caught_up in _snapshot_tokens(raw_text, trackers):
                yield caught_up
        next_poll = time.monotonic() + DB_POLL_REDIS
        last_sent = time.monotonic()
        while True:
            payload = await sub.next(timeout=0.5)
            check_db = time.monotonic() >= next_poll
            if payload is LOST:
                check_db = True  # the subscription is gone: the database polling carries on
            elif payload is not None:
                decoded = live.decode(payload)
                if decoded is not None:
                    event, data = decoded
                    if event == "token":
                        task = str(data["task"]) if data.get("task") is not None else None
                        text = trackers.setdefault(task, TextTracker())
                        delta = text.from_delta(int(data.get("round", 0)), int(data.get("offset", 0)),
                                                str(data.get("text", "")))
                        if delta:
                            yield _token(delta, text.round, task)
                            last_sent = time.monotonic()
                    elif event in ("status", "done"):
                        live_changes = _live_changes(job_id, data, status)
                        if live_changes is None:
                            check_db = True
                        else:
                            events, status = live_changes
                            for change in events:
                                yield change
                            if status in TERMINAL:
                                return
            if check_db:
                next_poll = time.monotonic() + DB_POLL_REDIS
                job = await _job(ctx, tenant_id, job_id)
                for change in _changes(job, status):
                    yield change
                status = job.status
                if job.status in TERMINAL:
                    return
            if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
            if await request.is_disconnected():
                return
    finally:
        await _close(sub)
