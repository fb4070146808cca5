"""``/dashboard/overview``: the tenant's jobs by status over time, throughput, queue wait and run
time percentiles, failures by code; the panel refreshes itself every few seconds."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from api.context import get_ctx
from api.dashboard import charts, render
from api.dashboard.access import Viewer, viewer
from core.db import utcnow
from jobs.overview import STATUSES, tenant_overview

router = APIRouter(prefix="/dashboard", include_in_schema=False)

#: window name -> (length, buckets)
WINDOWS = {"1h": (timedelta(hours=1), 12), "24h": (timedelta(hours=24), 24), "7d": (timedelta(days=7), 14)}


def _panel_context(request: Request, tenant_id: str, window: str) -> dict[str, Any]:
    ctx = get_ctx(request)
    length, n = WINDOWS.get(window, WINDOWS["1h"])
    now = utcnow()
    with ctx.db.session() as session:
        o = tenant_overview(session, tenant_id, now, length, n)
    fmt = "%H:%M" if length <= timedelta(hours=24) else "%m-%d"
    labels = [(o.since + timedelta(seconds=o.bucket_seconds * i)).strftime(fmt) for i in range(n)]
    return {
        "o": o, "window": window if window in WINDOWS else "1h", "windows": list(WINDOWS),
        "status_chart": charts.stacked_bars(o.buckets, labels, list(STATUSES)),
        "failure_chart": charts.hbars(o.failures[:12]),
    }


@router.get("/overview")
async def overview(request: Request, v: Annotated[Viewer, Depends(viewer)],
                   window: Annotated[str, Query(max_length=8)] = "1h") -> Response:
    data = await to_thread.run_sync(_panel_context, request, v.tenant_id, window)
    return render.page(request, "overview.html", v, **data)


@router.get("/overview/panel")
async def overview_panel(request: Request, v: Annotated[Viewer, Depends(viewer)],
                         window: Annotated[str, Query(max_length=8)] = "1h") -> Response:
    data = await to_thread.run_sync(_panel_context, request, v.tenant_id, window)
    return render.page(request, "_overview.html", v, **data)
