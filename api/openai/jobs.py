"""The captionq job behind a chat completion: submit it, wait for it, follow its live events,
cancel it when the client leaves."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread
from fastapi import Request

from api import waiting
from api.context import AppContext
from api.live_hub import Subscription
from api.routes import events
from jobs import ids
from jobs.admission import Admission
from jobs.render import job_to_dict
from jobs.requests import normalize_job_request
from jobs.states import TERMINAL
from jobs.tables import Job

# Job error codes that mean the request itself was bad (400); any other failure is a 500.
CLIENT_ERRORS = {"media_not_found", "unsupported_media", "media_too_large", "media_unreadable",
                 "context_too_long", "invalid_input", "invalid_request", "url_not_allowed"}


def served_models(ctx: AppContext) -> list[str]:
    """The ids accepted as ``model``, those to list first. With a model registry
    (``CAPTIONQ_MODELS``): its names, the default first, then their checkpoints as configured.
    Without: the one model's id (``model_name`` or the checkpoint's folder / hub id), then its
    checkpoint."""
    s = ctx.settings
    if s.models:
        registry = s.registry
        names = [registry.default, *registry.names]
        return list(dict.fromkeys([*names, *(spec.checkpoint for spec in registry.models.values())]))
    model = s.model
    name = s.model_name or (Path(model).name if Path(model).is_absolute() else model)
    return list(dict.fromkeys([name, model]))


def listed_models(ctx: AppContext) -> list[str]:
    """What ``GET /openai/v1/models`` lists: each served model once."""
    s = ctx.settings
    return served_models(ctx)[: len(s.registry.names) if s.models else 1]


def with_model(ctx: AppContext, job: dict[str, Any], model: str) -> dict[str, Any]:
    """The job request for a completion that named ``model`` (one of :func:`served_models`):
    with a registry the job runs on that model; without, on the one model."""
    return {**job, "model": model} if ctx.settings.models else job


async def submit(request: Request, ctx: AppContext, tenant_id: str, job_request: dict[str, Any],
                 admit: Admission | None = None) -> tuple[Job, Subscription | None]:
    """Validate and submit the job, subscribed to its live events before it can run."""
    new_id = ids.job_id()
    listening = waiting.Listener(request, ctx, new_id)

    def create() -> Job:
        req = normalize_job_request(job_request, ctx.checker, ctx.limits)
        return ctx.service.submit(tenant_id, req, job_id=new_id, before_publish=listening.wait_ready,
                                  admission=admit)

    try:
        job = await to_thread.run_sync(create)
        return job, await listening.subscription()
    except BaseException:
        await listening.close()
        raise


async def cancel(request: Request, ctx: AppContext, tenant_id: str, job_id: str) -> None:
    """The client left: cancel the job (shielded: this runs while the request is cancelled)."""
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        job = await to_thread.run_sync(ctx.service.cancel, tenant_id, job_id)
        if job.status == "running" and job.cancel_requested:
            await waiting.announce_cancel(request, ctx, job_id)


async def wait(request: Request, ctx: AppContext, tenant_id: str, job: Job,
               sub: Subscription | None) -> dict[str, Any] | None:
    """The job's JSON once it ends; None when the client left first (the job is then canceled)."""
    data: dict[str, Any] | None = job_to_dict(job)
    ended = False
    try:
        while True:
            data = await waiting.wait_terminal(request, ctx, tenant_id, job.id, waiting.MAX_WAIT_SECONDS,
                                               sub=sub, known=data)
            sub = None
            if data["status"] in TERMINAL:
                ended = True
                return data
            if await request.is_disconnected():
                return None
    finally:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.close()
        if not ended:
            await cancel(request, ctx, tenant_id, job.id)


async def live_events(request: Request, ctx: AppContext, tenant_id: str, job: Job,
                      sub: Subscription | None) -> AsyncIterator[tuple[str, Any]]:
    """The job's ``status`` / ``token`` / ``done`` events as ``GET /v1/jobs/{id}/events`` sends
    them (the same gap-free sources), decoded."""
    source = (events._redis_stream(request, ctx, tenant_id, job, sub, None) if sub is not None
              else events._db_stream(request, ctx, tenant_id, job))
    async for raw in source:
        if raw.startswith(b":"):
            continue  # keep-alive
        head, _, data = raw.decode().partition("\ndata: ")
        yield head.removeprefix("event: "), json.loads(data)
