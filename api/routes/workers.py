"""``GET /v1/workers``: the GPU worker fleet — each worker's slots, KV budget, tokens/s and batch
occupancy from its heartbeat (:mod:`jobs.fleet` says what a tenant may see and why); and
``GET /v1/queues``: each queue's depth and the age of its oldest waiting work (:mod:`jobs.gauges`),
shared capacity too, so any tenant sees them."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Request

from api.context import get_ctx, tenant
from core.db import utcnow
from jobs.fleet import list_workers
from jobs.gauges import queue_states

router = APIRouter(prefix="/v1", tags=["ops"])


@router.get("/workers", summary="GPU workers: capacity, tokens/s and batch occupancy")
async def workers(request: Request, _tenant_id: Annotated[str, Depends(tenant)]) -> dict[str, Any]:
    """Every GPU worker with a heartbeat row, live or silent (``dead``) until the sweeper drops
    it; rates are over the worker's last heartbeat interval. Any tenant sees the whole fleet
    (shared capacity), with a count of running jobs but never the jobs."""
    ctx = get_ctx(request)

    def run() -> dict[str, Any]:
        with ctx.db.session() as session:
            return list_workers(session, ctx.settings.worker_dead_seconds, utcnow())

    return await to_thread.run_sync(run)  # type: ignore[no-any-return]


@router.get("/queues", summary="Queues: messages in the broker, waiting work and its oldest age")
async def queues(request: Request, _tenant_id: Annotated[str, Depends(tenant)]) -> dict[str, Any]:
    """``gpu.<model>`` (one per served model): caption messages in the broker (``messages``; null
    when the broker cannot say), jobs queued in SQL (``waiting``) and the oldest queued job's
    age; ``io``: messages in the broker and webhook messages due for an attempt. The numbers
    behind ``/metrics``' ``captionq_queue_*`` gauges (cached there for a few seconds; read afresh
    here)."""
    ctx = get_ctx(request)

    def run() -> dict[str, Any]:
        states = queue_states(ctx.db, ctx.publisher, ctx.settings.registry, ctx.settings.worker_dead_seconds,
                              utcnow())
        return {"object": "list", "data": [q.to_dict() for q in states]}

    return await to_thread.run_sync(run)  # type: ignore[no-any-return]
