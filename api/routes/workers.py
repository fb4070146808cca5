"""``GET /v1/workers``: the GPU worker fleet — each worker's slots, KV budget, tokens/s and batch
occupancy from its heartbeat (:mod:`jobs.fleet` says what a tenant may see and why)."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Request

from api.context import get_ctx, tenant
from core.db import utcnow
from jobs.fleet import list_workers

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
