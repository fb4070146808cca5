"""``/openai/v1/batches``: OpenAI's Batch API over a captionq batch.

The input file's lines (``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"body"}``) become the jobs of one captionq batch (``custom_id`` kept), validated as a whole at
creation: a bad line is a 400 naming its line number (OpenAI would fail the batch later). The
batch id is captionq's; statuses: ``in_progress`` while jobs run, then ``completed`` or
``cancelled`` (``cancelling`` after a cancel while jobs still run).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from fastapi.responses import JSONResponse

from api import waiting
from api.body import read_json
from api.context import AnyPrincipal, AppContext, admission, get_ctx, tenant
from api.openai import files
from api.openai.errors import OpenAIError, OpenAIRoute
from api.openai.jobs import served_models, with_model
from api.openai.mapping import map_request
from jobs import batches, lists
from jobs.batches import BatchPlan
from jobs.tables import Batch

router = APIRouter(prefix="/openai/v1", tags=["openai"], route_class=OpenAIRoute, include_in_schema=False)
Tenant = Annotated[str, Depends(tenant)]

ENDPOINT = "/v1/chat/completions"


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def batch_object(batch: Batch) -> dict[str, Any]:
    meta = batch.meta or {}
    ended = batch.status in ("completed", "canceled", "expired")
    if batch.status == "canceled":
        status = "cancelled"
    elif batch.status in ("completed", "expired"):
        status = batch.status
    else:
        status = "cancelling" if batch.cancel_requested_at is not None else "in_progress"
    done = batch.succeeded + batch.failed + batch.canceled
    return {
        "id": batch.id, "object": "batch", "endpoint": ENDPOINT, "errors": None,
        "input_file_id": meta.get("openai_input_file_id"), "completion_window": "24h",
        "status": status,
        "output_file_id": f"file-out-{batch.id}" if ended and batch.succeeded else None,
        "error_file_id": f"file-err-{batch.id}" if ended and batch.failed + batch.canceled else None,
        "created_at": _ts(batch.created_at), "in_progress_at": _ts(batch.created_at),
        "expires_at": None, "finalizing_at": None,
        "completed_at": _ts(batch.finished_at) if batch.status == "completed" else None,
        "failed_at": None, "expired_at": None,
        "cancelling_at": _ts(batch.cancel_requested_at),
        "cancelled_at": _ts(batch.finished_at) if batch.status == "canceled" else None,
        "request_counts": {"total": batch.total, "completed": batch.succeeded,
                           "failed": batch.failed + batch.canceled if done else batch.failed},
        "metadata": meta.get("openai_metadata"),
    }


def _jobs(ctx: AppContext, lines: Iterator[bytes]) -> Iterator[tuple[int, Any]]:
    models = served_models(ctx)
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            raise OpenAIError(f"line {number} of the input file is not valid JSON",
                              param="input_file_id", code="invalid_jsonl") from None
        if not isinstance(line, dict) or line.get("url") != ENDPOINT or line.get("method", "POST") != "POST":
            raise OpenAIError(f"line {number}: only POST {ENDPOINT} requests are supported",
                              param="input_file_id", code="invalid_url")
        if not isinstance(line.get("custom_id"), str):
            raise OpenAIError(f"line {number}: custom_id is required", param="input_file_id")
        try:
            mapped = map_request(line.get("body"))
        except OpenAIError as exc:
            raise OpenAIError(f"line {number}: {exc.message}", param="input_file_id", code=exc.code) from None
        if mapped.stream or mapped.model not in models:
            raise OpenAIError(f"line {number}: model {mapped.model!r} is not served here (or stream is set)",
                              param="input_file_id", code="model_not_found")
        yield number, {**with_model(ctx, mapped.job, mapped.model), "custom_id": line["custom_id"]}


@router.post("/batches")
async def create_batch(request: Request, tenant_id: Tenant, who: AnyPrincipal,
                       background: BackgroundTasks) -> JSONResponse:
    ctx = get_ctx(request)
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
        raise OpenAIError("input_file_id is required", param="input_file_id")
    if body.get("endpoint") != ENDPOINT:
        raise OpenAIError(f"only endpoint {ENDPOINT} is supported", param="endpoint")
    if body.get("completion_window", "24h") != "24h":
        raise OpenAIError("completion_window must be 24h", param="completion_window")
    file_id = body["input_file_id"]
    meta: dict[str, Any] = {"openai_input_file_id": file_id}
    if body.get("metadata"):
        meta["openai_metadata"] = body["metadata"]

    admit = admission(who)

    def create() -> tuple[Batch, list[int]]:
        batches.precheck(ctx.service, tenant_id, admit, 1)
        model = _first_model(ctx, tenant_id, file_id)
        plan = BatchPlan(None, None, None, None, None, {**meta, "openai_model": model}, False)
        spool = batches.validate_lines(_jobs(ctx, files.input_lines(ctx, tenant_id, file_id)), plan,
                                       ctx.checker, ctx.limits, "input_file")
        return batches.insert_batch(ctx.service, tenant_id, plan, spool, admission=admit)

    batch, to_publish = await to_thread.run_sync(create)
    response = JSONResponse(batch_object(batch))
    if to_publish:
        background.add_task(ctx.service.publish, to_publish)
        response.background = background
    return response


def _first_model(ctx: AppContext, tenant_id: str, file_id: str) -> str:
    """The model the output lines name (the first request's; a bad line is refused with its
    number by the validation that follows)."""
    for raw in files.input_lines(ctx, tenant_id, file_id):
        if raw.strip():
            try:
                return map_request(json.loads(raw).get("body")).model
            except (ValueError, AttributeError, OpenAIError):
                return ""
    return ""


def _get(ctx: AppContext, tenant_id: str, batch_id: str) -> Batch:
    batch = batches.get_batch(ctx.service, tenant_id, batch_id)
    if "openai_input_file_id" not in (batch.meta or {}):
        raise OpenAIError(f"No such Batch object: {batch_id}", status=404, param="batch_id", code="not_found")
    return batch


@router.get("/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str, tenant_id: Tenant) -> dict[str, Any]:
    ctx = get_ctx(request)
    return batch_object(await to_thread.run_sync(_get, ctx, tenant_id, batch_id))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str, tenant_id: Tenant) -> dict[str, Any]:
    ctx = get_ctx(request)
    await to_thread.run_sync(_get, ctx, tenant_id, batch_id)
    batch = await to_thread.run_sync(batches.cancel_batch, ctx.service, tenant_id, batch_id)
    await waiting.announce_batch_cancel(request, ctx, batch_id)
    return batch_object(batch)


@router.get("/batches")
async def list_batches(request: Request, tenant_id: Tenant,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    ctx = get_ctx(request)

    def run() -> list[dict[str, Any]]:
        with ctx.db.session() as session:
            page = lists.list_batches(session, tenant_id, None, lists.MAX_LIMIT, None)
        return [batch_object(b) for b in page.rows if "openai_input_file_id" in (b.meta or {})][:limit]

    data = await to_thread.run_sync(run)
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": False}
