"""``/openai/v1``: chat completions and the model list, in OpenAI's shapes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.body import read_json
from api.context import AnyPrincipal, AppContext, admission, get_ctx, tenant
from api.openai import jobs, render
from api.openai.errors import OpenAIError, OpenAIRoute, openai_error
from api.openai.mapping import Mapped, map_request
from jobs.tables import Job

router = APIRouter(prefix="/openai/v1", tags=["openai"], route_class=OpenAIRoute,
                   include_in_schema=False)

Tenant = Annotated[str, Depends(tenant)]


@router.get("/models")
async def list_models(request: Request, _tenant_id: Tenant) -> dict[str, Any]:
    ctx = get_ctx(request)
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "captionq"}
        for name in jobs.listed_models(ctx)
    ]}


@router.get("/models/{model:path}")
async def get_model(request: Request, model: str, _tenant_id: Tenant) -> dict[str, Any]:
    ctx = get_ctx(request)
    if model not in jobs.served_models(ctx):
        raise OpenAIError(f"The model {model!r} does not exist", status=404, param="model",
                          code="model_not_found")
    return {"id": model, "object": "model", "created": 0, "owned_by": "captionq"}


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: Request, tenant_id: Tenant,
                           who: AnyPrincipal) -> JSONResponse | StreamingResponse:
    ctx = get_ctx(request)
    mapped = map_request(await read_json(request))
    if mapped.model not in jobs.served_models(ctx):
        raise OpenAIError(f"The model {mapped.model!r} does not exist; this server serves "
                          f"{jobs.served_models(ctx)[0]!r}", status=404, param="model",
                          code="model_not_found")
    job, sub = await jobs.submit(request, ctx, tenant_id, jobs.with_model(ctx, mapped.job, mapped.model),
                                 admission(who))
    headers = {"X-Captionq-Job-Id": job.id}
    if mapped.stream:
        return StreamingResponse(_stream(request, ctx, tenant_id, job, sub, mapped),
                                 media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    data = await jobs.wait(request, ctx, tenant_id, job, sub)
    if data is None:
        return openai_error(499, "the client closed the request; the job was canceled", code="canceled")
    if data["status"] != "succeeded":
        return _job_error(data)
    return JSONResponse(render.completion(data, mapped.model), headers=headers)


def _job_error(data: dict[str, Any]) -> JSONResponse:
    err = data.get("error") or {}
    code = str(err.get("code") or data["status"])
    message = str(err.get("message") or f"the job {data['id']} ended {data['status']}")
    status = 400 if code in jobs.CLIENT_ERRORS else 500
    return openai_error(status, message, code=code, headers={"X-Captionq-Job-Id": data["id"]})


async def _stream(request: Request, ctx: AppContext, tenant_id: str, job: Job, sub: Any,
                  mapped: Mapped) -> AsyncIterator[bytes]:
    created = int(job.created_at.timestamp()) if job.created_at else int(time.time())
    model, sent, ended = mapped.model, "", False
    try:
        yield render.sse_data(render.chunk(job.id, model, created, {"role": "assistant", "content": ""}))
        async for event, data in jobs.live_events(request, ctx, tenant_id, job, sub):
            if event == "token" and data.get("text"):
                sent += data["text"]
                yield render.sse_data(render.chunk(job.id, model, created, {"content": data["text"]}))
            elif event == "done":
                ended = True
                if data["status"] != "succeeded":
                    err = data.get("error") or {}
                    yield render.sse_data({"error": {
                        "message": err.get("message") or f"the job ended {data['status']}",
                        "type": "server_error", "param": None, "code": err.get("code") or data["status"]}})
                    return
                final = (data.get("output") or {}).get("text", "")
                rest = final[len(sent):] if final.startswith(sent) else ""
                if rest:  # text the live events did not carry (the answer is trimmed at the end)
                    yield render.sse_data(render.chunk(job.id, model, created, {"content": rest}))
                last = ((data.get("output") or {}).get("rounds") or [{}])[-1]
                yield render.sse_data(render.chunk(job.id, model, created, {},
                                                   render.finish_reason(last.get("finish_reason"))))
                if mapped.include_usage:
                    yield render.sse_data(render.usage_chunk(data, model, created))
                yield render.DONE
                return
    finally:
        if not ended:
            await jobs.cancel(request, ctx, tenant_id, job.id)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def not_found(path: str) -> JSONResponse:
    """Anything else under the prefix (the Batch API, embeddings, …) in OpenAI's shape."""
    return openai_error(404, f"/openai/v1/{path} is not supported by this server", code="not_found")
