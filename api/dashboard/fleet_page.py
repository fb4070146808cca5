"""``/dashboard/fleet`` (operators): each served model with its queue — jobs queued, messages in
the broker, the oldest job's age, free slots and the wait estimate (``GET /v1/models``'s data,
:mod:`jobs.model_fleet`) —, the webhook queue (:func:`jobs.overview.pending_webhooks`), and
every GPU worker with its model, slots, batch occupancy, tokens/s and GPU memory
(``GET /v1/workers``'s data, :mod:`jobs.fleet`)."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from api.context import get_ctx
from api.dashboard import render
from api.dashboard.access import Viewer, viewer
from core.db import utcnow
from jobs.fleet import list_workers
from jobs.model_fleet import list_models
from jobs.overview import pending_webhooks

router = APIRouter(prefix="/dashboard", include_in_schema=False)


def gpu_memory(engine: dict[str, Any] | None) -> str | None:
    """``allocated GiB (reserved GiB)`` from the engine figures of the worker's heartbeat; None
    when it sends none, or zeros (a CPU worker)."""
    if not engine:
        return None
    allocated = engine.get("gpu_memory_allocated_bytes")
    reserved = engine.get("gpu_memory_reserved_bytes")
    if not allocated and not reserved:
        return None
    gib = 1024 ** 3
    text = f"{(allocated or 0) / gib:.1f} GiB"
    return f"{text} (reserved {reserved / gib:.1f})" if reserved else text


def _fleet(request: Request) -> dict[str, Any]:
    ctx = get_ctx(request)
    now = utcnow()
    with ctx.db.session() as session:
        fleet = list_workers(session, ctx.settings.worker_dead_seconds, now)
        models = list_models(session, ctx.settings.registry, ctx.settings.worker_dead_seconds, now,
                             ctx.publisher.ready_count)
        webhooks = pending_webhooks(session, now)
    for w in fleet["data"]:
        w["gpu_memory"] = gpu_memory(w.get("engine"))
    return {"workers": fleet["data"], "totals": fleet["totals"], "models": models["data"],
            "webhooks": webhooks}


@router.get("/fleet")
async def fleet(request: Request, v: Annotated[Viewer, Depends(viewer)]) -> Response:
    if not v.operator:
        return render.page(request, "forbidden.html", v, status_code=403)
    return render.page(request, "fleet.html", v, **await to_thread.run_sync(_fleet, request))


@router.get("/fleet/panel")
async def fleet_panel(request: Request, v: Annotated[Viewer, Depends(viewer)]) -> Response:
    if not v.operator:
        return render.page(request, "forbidden.html", v, status_code=403)
    return render.page(request, "_fleet.html", v, **await to_thread.run_sync(_fleet, request))
