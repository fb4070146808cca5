"""``/v1/jobs``: submit, read (with long-poll), list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from api import waiting
from api.body import read_json
from api.context import AnyPrincipal, AppContext, admission, get_ctx, tenant
from api.openapi import body_schema
from core import logcontext
from jobs import idempotency, ids, lists
from jobs.render import job_to_dict
from jobs.requests import normalize_job_request
from jobs.states import JobStatus

router = APIRouter(prefix="/v1", tags=["jobs"])

Tenant = Annotated[str, Depends(tenant)]


async def run_idempotent(
    request: Request, ctx: AppContext, tenant_id: str, endpoint: str, body: Any,
    create: Any, load: Any,
) -> JSONResponse:
    """Run ``create()`` (→ (id, json)) once per Idempotency-Key; replay with ``load(id)``."""
    _id, data, replayed = await create_once(request, ctx, tenant_id, endpoint, body, create, load)
    if replayed:
        return JSONResponse(data, status_code=200, headers={"Idempotent-Replayed": "true"})
    return JSONResponse(data, status_code=202)


async def create_once(
    request: Request, ctx: AppContext, tenant_id: str, endpoint: str, body: Any,
    create: Any, load: Any,
) -> tuple[str, dict[str, Any], bool]:
    """:func:`run_idempotent`'s work: (resource id, its JSON, whether it is a replay)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        resource_id, data = await to_thread.run_sync(create)
        return resource_id, data, False
    body_hash = idempotency.request_hash(endpoint, body)
    existing = await to_thread.run_sync(
        lambda: idempotency.claim(ctx.db, tenant_id, key, endpoint, body_hash,
                                  ctx.settings.idempotency_ttl_seconds))
    if existing is not None:
        return existing, await to_thread.run_sync(load, existing), True
    try:
        resource_id, data = await to_thread.run_sync(create)
    except BaseException:
        await to_thread.run_sync(idempotency.release, ctx.db, tenant_id, key)
        raise
    await to_thread.run_sync(idempotency.complete, ctx.db, tenant_id, key, resource_id)
    return resource_id, data, False


@router.post("/jobs", status_code=202, summary="Submit a job",
             openapi_extra=body_schema("JobRequest"), responses={202: {"description": "The Job"}})
async def submit_job(request: Request, tenant_id: Tenant, who: AnyPrincipal) -> JSONResponse:
    """``Prefer: wait=N`` (RFC 7240, an extension of API.md): answer when the job has ended or
    after N seconds (at most 60), whichever comes first; the status code is 202 either way and
    ``Preference-Applied`` says the wait was honoured."""
    ctx = get_ctx(request)
    body = await read_json(request)
    wait = waiting.prefer_wait(request.headers.get("prefer"))
    new_id = ids.job_id()
    logcontext.set_fields(job_id=new_id)
    # With a wait, listen to the job's events before its message reaches the broker (no ``done``
    # can be missed), subscribing while the job is validated and inserted.
    listening = waiting.Listener(request, ctx, new_id) if wait else None

    def create() -> tuple[str, dict[str, Any]]:
        req = normalize_job_request(body, ctx.checker, ctx.limits)
        job = ctx.service.submit(tenant_id, req, job_id=new_id, admission=admission(who),
                                 before_publish=listening.wait_ready if listening else None)
        return job.id, job_to_dict(job)

    def load(job_id: str) -> dict[str, Any]:
        return job_to_dict(ctx.service.get(tenant_id, job_id))

    try:
        job_id, data, replayed = await create_once(request, ctx, tenant_id, "POST /v1/jobs", body,
                                                   create, load)
        sub = await listening.subscription() if listening else None
    except BaseException:
        if listening is not None:
            await listening.close()
        raise
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    if wait is None:
        return JSONResponse(data, status_code=200 if replayed else 202, headers=headers)
    if replayed and sub is not None:  # listening to another id: the replayed job subscribes itself
        await sub.close()
        sub = None
    data = await waiting.wait_terminal(request, ctx, tenant_id, job_id, wait, sub=sub,
                                       known=None if replayed else data)
    headers["Preference-Applied"] = f"wait={wait:g}"
    return JSONResponse(data, status_code=200 if replayed else 202, headers=headers)


@router.get("/jobs/{job_id}", summary="Get a job (optionally long-polling until it ends)")
async def get_job(
    request: Request, job_id: str, tenant_id: Tenant,
    wait: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for a terminal status")] = 0,
) -> dict[str, Any]:
    ctx = get_ctx(request)
    if wait <= 0:
        return job_to_dict(await to_thread.run_sync(ctx.service.get, tenant_id, job_id))
    return await waiting.wait_terminal(request, ctx, tenant_id, job_id, wait)


@router.get("/jobs", summary="List jobs, newest first")
async def list_jobs(
    request: Request, tenant_id: Tenant,
    status: Annotated[str | None, Query(description="Only jobs in this status",
                                        json_schema_extra={"enum": [s.value for s in JobStatus]})] = None,
    batch_id: Annotated[str | None, Query(description="Only the jobs of this batch (bat_…)")] = None,
    custom_id: Annotated[str | None, Query(description="Only jobs with this custom_id")] = None,
    created_after: Annotated[str | None, Query(description="RFC 3339 time (exclusive)",
                                               json_schema_extra={"format": "date-time"})] = None,
    created_before: Annotated[str | None, Query(description="RFC 3339 time (exclusive)",
                                                json_schema_extra={"format": "date-time"})] = None,
    limit: Annotated[int, Query(ge=1, le=lists.MAX_LIMIT)] = lists.DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    ctx = get_ctx(request)
    f = lists.JobFilters(
        status=status, batch_id=batch_id, custom_id=custom_id,
        created_after=_time(created_after, "created_after"),
        created_before=_time(created_before, "created_before"),
    )

    def run() -> dict[str, Any]:
        with ctx.db.session() as session:
            page = lists.list_jobs(session, tenant_id, f, limit, cursor)
            data = [job_to_dict(j) for j in page.rows]
            return {"object": "list", "data": data, "next_cursor": page.next_cursor}

    return await to_thread.run_sync(run)  # type: ignore[no-any-return]


def _time(value: str | None, name: str) -> Any:
    return lists.parse_time(value, ["query", name]) if value else None


@router.post("/jobs/{job_id}/cancel", status_code=202, summary="Cancel a job")
async def cancel_job(request: Request, job_id: str, tenant_id: Tenant) -> JSONResponse:
    ctx = get_ctx(request)
    job = await to_thread.run_sync(ctx.service.cancel, tenant_id, job_id)
    if job.status == "running" and job.cancel_requested:
        await waiting.announce_cancel(request, ctx, job_id)  # the worker stops at its next step
    return JSONResponse(job_to_dict(job), status_code=202)
