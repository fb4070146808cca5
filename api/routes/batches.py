"""``/v1/batches``: submit (inline or manifest), read, list, cancel, results (NDJSON)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api import waiting
from api.body import read_json
from api.context import AnyPrincipal, AppContext, admission, get_ctx, tenant
from api.openapi import body_schema, optional_body
from api.routes.jobs import run_idempotent
from core.errors import CaptionqError, InvalidRequest, ServiceUnavailable, as_captionq_error
from jobs import batch_retry, batches, lists
from jobs.render import batch_to_dict
from jobs.requests import normalize_job_request
from jobs.source_requests import SourceNormalizer
from jobs.states import BatchStatus

router = APIRouter(prefix="/v1", tags=["batches"])

Tenant = Annotated[str, Depends(tenant)]


def manifest_lines(ctx: AppContext, url: str) -> Iterator[tuple[int, bytes]]:
    """The manifest as ``(line number, bytes)``, streamed; read failures become 4xx/503."""
    from storage.objects import iter_lines

    it = iter_lines(url, ctx.checker.config)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as exc:
            raise _manifest_error(exc) from exc
        yield item


def _manifest_error(exc: Exception) -> CaptionqError:
    err = as_captionq_error(exc)
    if err.retryable:
        return ServiceUnavailable(f"the manifest could not be read right now: {err.message}")
    line = getattr(exc, "line", None)
    loc: list[Any] = ["manifest", line] if isinstance(line, int) else ["manifest_url"]
    errors = [{"loc": loc, "msg": err.message, "code": err.code}]
    return InvalidRequest(f"manifest: {err.message}", errors=errors)


def source_items(ctx: AppContext, spec: Any) -> Iterator[tuple[int, Any]]:
    """A source's items as ``(seq, job object)``, seq from 1 in source order; read failures
    become 4xx/503 like a manifest's."""
    from jobs.sources import iter_items

    it = iter_items(spec, ctx.checker.config)
    n = 0
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except InvalidRequest:
            raise
        except Exception as exc:
            err = as_captionq_error(exc)
            if err.retryable:
                raise ServiceUnavailable(f"the source could not be read right now: {err.message}") from exc
            raise InvalidRequest(f"source: {err.message}", errors=[
                {"loc": ["source", "url"], "msg": err.message, "code": err.code}]) from exc
        n += 1
        yield n, item


@router.post("/batches", status_code=202, summary="Submit a batch of jobs",
             openapi_extra=body_schema("BatchRequest"), responses={202: {"description": "The Batch"}})
async def submit_batch(request: Request, tenant_id: Tenant, who: AnyPrincipal,
                       background: BackgroundTasks) -> JSONResponse:
    ctx = get_ctx(request)
    body = await read_json(request)
    to_publish: list[int] = []
    admit = admission(who)

    def create() -> tuple[str, dict[str, Any]]:
        plan = batches.plan_batch(body, ctx.checker, ctx.settings.max_batch_jobs_inline)
        batches.precheck(ctx.service, tenant_id, admit, len(plan.jobs) if plan.jobs is not None else 1)
        if plan.jobs is not None:
            lines: Any = enumerate(plan.jobs)
            loc_name = "jobs"
        elif plan.source is not None:
            lines = source_items(ctx, plan.source)
            loc_name = "source"
        else:
            assert plan.manifest_url is not None
            lines = ((n, raw) for n, raw in manifest_lines(ctx, plan.manifest_url))
            loc_name = "manifest"
        if plan.resume_from is not None:
            batch_retry.check_resume(ctx.db, tenant_id, plan.resume_from)
            lines = batch_retry.skip_succeeded(ctx.db, plan.resume_from, lines)
        normalize = SourceNormalizer() if plan.source is not None else normalize_job_request
        spool = batches.validate_lines(lines, plan, ctx.checker, ctx.limits, loc_name, normalize)
        batch, outbox_ids = batches.insert_batch(ctx.service, tenant_id, plan, spool, admission=admit)
        to_publish.extend(outbox_ids)
        return batch.id, batch_to_dict(batch)

    def load(batch_id: str) -> dict[str, Any]:
        return batch_to_dict(batches.get_batch(ctx.service, tenant_id, batch_id))

    response = await run_idempotent(request, ctx, tenant_id, "POST /v1/batches", body, create, load)
    if to_publish:
        # After the response: a big batch is enqueued in pipelined chunks in the background.
        background.add_task(ctx.service.publish, to_publish)
        response.background = background
    return response


@router.get("/batches/{batch_id}", summary="Get a batch and its counts")
async def get_batch(request: Request, batch_id: str, tenant_id: Tenant) -> dict[str, Any]:
    ctx = get_ctx(request)
    batch = await to_thread.run_sync(batches.get_batch, ctx.service, tenant_id, batch_id)
    return batch_to_dict(batch)


@router.get("/batches", summary="List batches, newest first")
async def list_batches(
    request: Request, tenant_id: Tenant,
    status: Annotated[str | None, Query(description="Only batches in this status",
                                        json_schema_extra={"enum": [s.value for s in BatchStatus]})] = None,
    limit: Annotated[int, Query(ge=1, le=lists.MAX_LIMIT)] = lists.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> dict[str, Any]:
    ctx = get_ctx(request)

    def run() -> dict[str, Any]:
        with ctx.db.session() as session:
            page = lists.list_batches(session, tenant_id, status, limit, cursor)
            return {"object": "list", "data": [batch_to_dict(b) for b in page.rows],
                    "next_cursor": page.next_cursor}

    return await to_thread.run_sync(run)  # type: ignore[no-any-return]


@router.post("/batches/{batch_id}/cancel", status_code=202, summary="Cancel every unfinished job of a batch")
async def cancel_batch(request: Request, batch_id: str, tenant_id: Tenant) -> JSONResponse:
    ctx = get_ctx(request)
    batch = await to_thread.run_sync(batches.cancel_batch, ctx.service, tenant_id, batch_id)
    await waiting.announce_batch_cancel(request, ctx, batch_id)  # running jobs stop at their next step
    return JSONResponse(batch_to_dict(batch), status_code=202)


@router.post("/batches/{batch_id}/retry", status_code=202,
             summary="Run a batch's failed jobs again (all, or those with the given error codes)",
             openapi_extra=optional_body("BatchRetryRequest"))
async def retry_batch(request: Request, batch_id: str, tenant_id: Tenant) -> JSONResponse:
    ctx = get_ctx(request)
    body = await request.body()
    codes = batch_retry.parse_retry(await read_json(request) if body.strip() else None)
    batch, n = await to_thread.run_sync(batch_retry.retry_batch, ctx.service, tenant_id, batch_id, codes)
    return JSONResponse({**batch_to_dict(batch), "retried": n}, status_code=202)


@router.get("/batches/{batch_id}/results", summary="Results in submission order (NDJSON, streamed)",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}}}})
async def batch_results(request: Request, batch_id: str, tenant_id: Tenant) -> StreamingResponse:
    ctx = get_ctx(request)
    await to_thread.run_sync(batches.get_batch, ctx.service, tenant_id, batch_id)  # 404 before streaming
    return StreamingResponse(result_chunks(ctx, batch_id), media_type="application/x-ndjson")


def result_chunks(ctx: AppContext, batch_id: str) -> Iterator[bytes]:
    """Keyset-paged reads (one short session per 1,000 rows), sent in ~200-line writes."""
    buf: list[bytes] = []
    for line in ctx.service.iter_batch_results(batch_id):
        buf.append(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        if len(buf) >= 200:
            yield b"".join(buf)
            buf = []
    if buf:
        yield b"".join(buf)
