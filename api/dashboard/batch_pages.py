"""``/dashboard/batches``: every batch with a live progress bar, rate, ETA and a cancel button;
one batch's page with its jobs, filtered by status and error code and searched by custom_id."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from api.context import get_ctx
from api.dashboard import render
from api.dashboard.access import Viewer, acting_viewer, viewer
from api.routes import batches as batch_routes
from core.db import utcnow
from core.errors import CaptionqError, NotFound
from jobs import batches, ids, lists
from jobs.overview import batch_progress
from jobs.render import batch_counts, job_to_dict
from jobs.states import BatchStatus, JobStatus
from jobs.tables import Batch

router = APIRouter(prefix="/dashboard", include_in_schema=False)

PAGE = 50
Status = Annotated[str | None, Query(max_length=16)]


def batch_view(batch: Batch) -> dict[str, Any]:
    """A batch as the templates show it: its counts and its progress now."""
    counts = batch_counts(batch)
    return {"b": batch, "counts": counts,
            "p": batch_progress(counts, batch.created_at, batch.finished_at, utcnow()),
            "live": batch.status in (BatchStatus.QUEUED, BatchStatus.RUNNING)}


def _list(request: Request, tenant_id: str, status: str | None, cursor: str | None) -> dict[str, Any]:
    ctx = get_ctx(request)
    status = status if status in {s.value for s in BatchStatus} else None
    with ctx.db.session() as session:
        page = lists.list_batches(session, tenant_id, status, PAGE, cursor or None)
        return {"rows": [batch_view(b) for b in page.rows], "next_cursor": page.next_cursor,
                "status": status, "statuses": [s.value for s in BatchStatus]}


@router.get("/batches")
async def batch_list(request: Request, v: Annotated[Viewer, Depends(viewer)], status: Status = None,
                     cursor: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    data = await to_thread.run_sync(_list, request, v.tenant_id, status, cursor)
    return render.page(request, "batches.html", v, **data, cursor=cursor)


@router.get("/batches/rows")
async def batch_rows(request: Request, v: Annotated[Viewer, Depends(viewer)], status: Status = None,
                     cursor: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    data = await to_thread.run_sync(_list, request, v.tenant_id, status, cursor)
    return render.page(request, "_batch_rows.html", v, **data, cursor=cursor)


async def _batch(request: Request, v: Viewer, batch_id: str) -> Batch | None:
    if not ids.is_valid("bat", batch_id):
        return None
    try:
        return await to_thread.run_sync(batches.get_batch, get_ctx(request).service, v.tenant_id, batch_id)
    except NotFound:
        return None


@router.get("/batches/{batch_id}")
async def batch_page(request: Request, batch_id: str, v: Annotated[Viewer, Depends(viewer)],
                     status: Status = None, error_code: Annotated[str | None, Query(max_length=64)] = None,
                     q: Annotated[str | None, Query(max_length=256)] = None) -> Response:
    batch = await _batch(request, v, batch_id)
    if batch is None:
        return render.not_found(request, v, f"batch {batch_id}")
    jobs = await to_thread.run_sync(_jobs, request, v.tenant_id, batch_id, status, error_code, q, None)
    return render.page(request, "batch.html", v, **batch_view(batch), **jobs, cursor=None)


@router.get("/batches/{batch_id}/progress")
async def batch_progress_panel(request: Request, batch_id: str,
                               v: Annotated[Viewer, Depends(viewer)]) -> Response:
    batch = await _batch(request, v, batch_id)
    if batch is None:
        return render.not_found(request, v, f"batch {batch_id}")
    return render.page(request, "_batch_progress.html", v, **batch_view(batch))


def _jobs(request: Request, tenant_id: str, batch_id: str, status: str | None, error_code: str | None,
          q: str | None, cursor: str | None) -> dict[str, Any]:
    ctx = get_ctx(request)
    status = status if status in {s.value for s in JobStatus} else None
    f = lists.JobFilters(status=status, batch_id=batch_id, error_code=error_code or None,
                         custom_id_prefix=q or None)
    with ctx.db.session() as session:
        page = lists.list_jobs(session, tenant_id, f, PAGE, cursor or None)
        rows = [job_to_dict(j) for j in page.rows]
    return {"jobs": rows, "next_cursor": page.next_cursor, "filters": {
        "status": status or "", "error_code": error_code or "", "q": q or ""},
        "job_statuses": [s.value for s in JobStatus], "batch_id": batch_id}


@router.get("/batches/{batch_id}/jobs")
async def batch_jobs(request: Request, batch_id: str, v: Annotated[Viewer, Depends(viewer)],
                     status: Status = None, error_code: Annotated[str | None, Query(max_length=64)] = None,
                     q: Annotated[str | None, Query(max_length=256)] = None,
                     cursor: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    batch = await _batch(request, v, batch_id)
    if batch is None:
        return render.not_found(request, v, f"batch {batch_id}")
    data = await to_thread.run_sync(_jobs, request, v.tenant_id, batch_id, status, error_code, q, cursor)
    return render.page(request, "_jobs_table.html", v, **data, cursor=cursor,
                       live=batch_view(batch)["live"])


@router.post("/batches/{batch_id}/cancel")
async def cancel(request: Request, batch_id: str, v: Annotated[Viewer, Depends(acting_viewer)],
                 view: Annotated[str, Query(max_length=16)] = "row") -> Response:
    """The API's own cancel (``POST /v1/batches/{id}/cancel``), then the row or panel again."""
    if await _batch(request, v, batch_id) is None:
        return render.not_found(request, v, f"batch {batch_id}")
    error = None
    try:
        await batch_routes.cancel_batch(request, batch_id, v.tenant_id)
    except CaptionqError as exc:  # e.g. batch_finished: show it where the button was
        error = exc.message
    batch = await _batch(request, v, batch_id)
    assert batch is not None
    if view == "progress":
        return render.page(request, "_batch_progress.html", v, **batch_view(batch), error=error)
    return render.page(request, "_batch_row.html", v, r=batch_view(batch), error=error)


@router.get("/batches/{batch_id}/results")
async def results(request: Request, batch_id: str, v: Annotated[Viewer, Depends(viewer)]) -> Response:
    """The batch's results as ``GET /v1/batches/{id}/results`` streams them (NDJSON)."""
    if await _batch(request, v, batch_id) is None:
        return render.not_found(request, v, f"batch {batch_id}")
    stream = batch_routes.result_chunks(get_ctx(request), batch_id)
    return StreamingResponse(stream, media_type="application/x-ndjson", headers={
        "Content-Disposition": f'inline; filename="{batch_id}-results.jsonl"'})
