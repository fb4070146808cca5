"""Waiting for a job to end inside one request: ``GET /v1/jobs/{id}?wait=N`` (API.md) and the
additive ``Prefer: wait=N`` on ``POST /v1/jobs`` (RFC 7240: submit and get the finished job in
the same response when it ends within N seconds, like a Celery ``apply_async().get()``).

With Redis for live events the wait listens on the job's channel through the process's shared
pub/sub connection (:mod:`api.live_hub`): the worker's ``done`` event carries the committed Job
JSON, so the answer needs no database read. Subscribing comes first, then the read (or, for a new
job, the publish), so no ``done`` can slip between. The database is still read every
``DB_RECHECK`` seconds (a cancel of a queued job or the sweeper's expiry publishes nothing).
Without Redis (local mode) it polls the database, 50 ms at first, backing off to 0.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from typing import Any

import anyio
from anyio import to_thread
from fastapi import Request

from api.context import AppContext
from api.live_hub import LOST, Subscription, hub_for
from jobs import batches, live
from jobs.render import job_to_dict
from jobs.states import TERMINAL

MAX_WAIT_SECONDS = 60.0
DB_RECHECK = 1.0
CONFIRM_TIMEOUT = 2.0  # LiveHub's default: how long Redis gets to confirm a subscription


def prefer_wait(header: str | None) -> float | None:
    """The ``wait`` preference of a ``Prefer`` header in seconds (clamped to 0..60), or None.
    Preferences that are not understood are ignored (RFC 7240 §2)."""
    if not header:
        return None
    for part in header.split(","):
        for token in part.split(";"):
            name, _, value = token.strip().partition("=")
            if name.strip().lower() != "wait":
                continue
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return None
            if not math.isfinite(seconds):
                return None
            return min(MAX_WAIT_SECONDS, max(0.0, seconds))
    return None


async def subscribe(request: Request, ctx: AppContext, job_id: str) -> Subscription | None:
    """Listen for the job's live events (None without Redis or when it is unreachable)."""
    hub = hub_for(request, ctx.settings.events_redis_url)
    if hub is None:
        return None
    try:
        return await hub.subscribe(live.channel(job_id))
    except Exception:
        return None


class Listener:
    """A subscription to a job's events made while the job is being created.

    Made on the event loop (it starts subscribing at once); the thread that creates the job calls
    :meth:`wait_ready` after its commit and before publishing the job's message, so the
    subscription is confirmed before the job can run — without adding the subscribe round trip
    to the request when it completes during the insert, as it does. :meth:`subscription` then
    gives it (None: no Redis, the wait polls the database)."""

    def __init__(self, request: Request, ctx: AppContext, job_id: str) -> None:
        self._ready = threading.Event()
        self._task = asyncio.create_task(self._subscribe(request, ctx, job_id))

    async def _subscribe(self, request: Request, ctx: AppContext, job_id: str) -> Subscription | None:
        try:
            return await subscribe(request, ctx, job_id)
        finally:
            self._ready.set()

    def wait_ready(self) -> None:
        """On the creating thread: block until subscribed (or given up: the hub's own timeout)."""
        self._ready.wait(CONFIRM_TIMEOUT + 1.0)

    async def subscription(self) -> Subscription | None:
        return await self._task

    async def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(BaseException):
            sub = await self._task
            if sub is not None:
                await sub.close()


async def announce_cancel(request: Request, ctx: AppContext, job_id: str) -> None:
    """Tell the workers (``jobs.live.CANCEL_CHANNEL``) that a running job's cancel was recorded;
    best effort — a worker that misses it finds the flag at its next database poll."""
    hub = hub_for(request, ctx.settings.events_redis_url)
    if hub is None:
        return
    with contextlib.suppress(Exception):
        await hub.client.publish(live.CANCEL_CHANNEL, job_id)


async def announce_batch_cancel(request: Request, ctx: AppContext, batch_id: str) -> None:
    """:func:`announce_cancel` for every job of a canceled batch that is running now."""
    if hub_for(request, ctx.settings.events_redis_url) is None:
        return
    for job_id in await to_thread.run_sync(batches.running_job_ids, ctx.service, batch_id):
        await announce_cancel(request, ctx, job_id)


async def _read(ctx: AppContext, tenant_id: str, job_id: str) -> dict[str, Any]:
    return await to_thread.run_sync(lambda: job_to_dict(ctx.service.get(tenant_id, job_id)))


def _final_job(payload: Any) -> dict[str, Any] | bool | None:
    """From a live event: the committed terminal Job JSON; True when the job changed without it
    (read the database); None when nothing to act on."""
    decoded = live.decode(payload)
    if decoded is None:
        return None
    event, data = decoded
    job = data.get("job")
    if event == "done" and isinstance(job, dict) and job.get("status") in TERMINAL:
        return job
    if event == "done" or (event == "status" and data.get("status") in TERMINAL):
        return True
    return None


async def wait_terminal(request: Request, ctx: AppContext, tenant_id: str, job_id: str, seconds: float,
                        *, sub: Subscription | None = None, known: dict[str, Any] | None = None,
                        ) -> dict[str, Any]:
    """The job's JSON once it is terminal, or as it is after ``seconds``. ``sub``: a subscription
    made before the job could end (it is closed here); ``known``: the job's JSON as of after
    that subscription (saves the first read). Raises NotFound for another tenant's job."""
    deadline = time.monotonic() + seconds
    if sub is None and seconds > 0:
        sub = await subscribe(request, ctx, job_id)
    try:
        job = known if known is not None else await _read(ctx, tenant_id, job_id)
        delay = 0.05
        next_read = time.monotonic() + DB_RECHECK
        while job["status"] not in TERMINAL:
            left = deadline - time.monotonic()
            if left <= 0 or await request.is_disconnected():
                break
            if sub is None or sub.lost:
                await anyio.sleep(min(delay, left))
                delay = min(delay * 1.5, 0.5)
                job = await _read(ctx, tenant_id, job_id)
                continue
            payload = await sub.next(timeout=min(left, max(0.0, next_read - time.monotonic())))
            final = _final_job(payload) if payload is not None and payload is not LOST else None
            if isinstance(final, dict):
                return final
            if final or payload is LOST or time.monotonic() >= next_read:
                job = await _read(ctx, tenant_id, job_id)
                next_read = time.monotonic() + DB_RECHECK
        return job
    finally:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.close()
