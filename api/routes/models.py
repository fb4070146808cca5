"""``GET /v1/models``: the served models — each with its live workers, free slots, queue depth,
oldest queued job and a rough wait estimate (:mod:`jobs.model_fleet` says how and why)."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Request

from api.context import get_ctx, tenant
from core.db import utcnow
from jobs.model_fleet import list_models

router = APIRouter(prefix="/v1", tags=["ops"])


@router.get("/models", summary="Served models: workers, free slots, queue depth, wait estimate")
async def models(request: Request, _tenant_id: Annotated[str, Depends(tenant)]) -> dict[str, Any]:
    """Every model of the registry (``CAPTIONQ_MODELS``), with the live workers serving it, its
    queue (jobs queued in the store, messages in the broker), the age of its oldest queued job
    and a rough wait estimate; a model without a live worker has ``status: "no_live_workers"``.
    Any tenant sees the whole fleet (shared capacity), never whose jobs are queued."""
    ctx = get_ctx(request)

    def run() -> dict[str, Any]:
        with ctx.db.session() as session:
            return list_models(session, ctx.settings.registry, ctx.settings.worker_dead_seconds, utcnow(),
                               ctx.publisher.ready_count)

    return await to_thread.run_sync(run)  # type: ignore[no-any-return]
