"""``/dashboard/jobs/{id}``: one job — media preview, rounds, its text streaming live while it
runs (the page's EventSource reads ``/dashboard/jobs/{id}/events``, the very stream of
``GET /v1/jobs/{id}/events`` with the session instead of a Bearer header, which an EventSource
cannot send), and its webhook messages with their attempts and a redeliver button (the API's
``POST /v1/webhook-deliveries/{id}/redeliver``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from api.context import get_ctx
from api.dashboard import render
from api.dashboard.access import Viewer, acting_viewer, viewer
from api.routes import events, webhook_deliveries
from core.errors import CaptionqError, NotFound
from jobs import ids, lists
from jobs.render import job_to_dict
from jobs.states import TERMINAL
from jobs.tables import Job
from jobs.webhooks import message_to_dict

router = APIRouter(prefix="/dashboard", include_in_schema=False)

PREVIEW_MAX_BYTES = 20 * 1024 * 1024  # bigger media get no preview (the page stays light)


async def _job(request: Request, v: Viewer, job_id: str) -> Job | None:
    if not ids.is_valid("job", job_id):
        return None
    try:
        return await to_thread.run_sync(get_ctx(request).service.get, v.tenant_id, job_id)
    except NotFound:
        return None


def _rounds(prompts: list[Any], output: dict[str, Any]) -> list[dict[str, Any]]:
    answers = list(output.get("rounds") or [])
    return [{"prompt": p, "text": answers[i].get("text") if i < len(answers) else None,
             "finish_reason": answers[i].get("finish_reason") if i < len(answers) else None}
            for i, p in enumerate(prompts)]


def _task_prompts(task: dict[str, Any]) -> list[Any]:
    """A task's rounds as the page lists them: its prompts, or its conversation's last user turn."""
    if task.get("prompts"):
        return list(task["prompts"])
    users = [m.get("content") for m in task.get("messages") or [] if isinstance(m, dict)
             and m.get("role") == "user"]
    last = users[-1] if users else ""
    return [last if isinstance(last, str) else json.dumps(last, ensure_ascii=False)[:500]]


def job_view(job: Job) -> dict[str, Any]:
    """The job as the page shows it: one section per task (one unnamed section without tasks),
    each with its rounds — prompt, answer, finish reason."""
    data = job_to_dict(job)
    req = job.request or {}
    output = job.output or {}
    if isinstance(req.get("tasks"), list):
        outputs = output.get("tasks") or {}
        sections = [{"name": t.get("name"), "kind": t.get("task") or "chat",
                     "rounds": _rounds(_task_prompts(t), outputs.get(t.get("name")) or {})}
                    for t in req["tasks"] if isinstance(t, dict)]
    else:
        sections = [{"name": None, "kind": req.get("task") or "chat",
                     "rounds": _rounds(list(req.get("prompts") or []), output)}]
    media = [{"index": i, "type": m.get("type"), "url": data["request"]["media"][i].get("url")}
             for i, m in enumerate(req.get("media") or []) if isinstance(m, dict)]
    return {"job": data, "sections": sections, "media": media, "live": job.status not in TERMINAL}


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str, v: Annotated[Viewer, Depends(viewer)]) -> Response:
    job = await _job(request, v, job_id)
    if job is None:
        return render.not_found(request, v, f"job {job_id}")
    hooks = await to_thread.run_sync(_webhooks, request, v.tenant_id, job_id)
    return render.page(request, "job.html", v, **job_view(job), messages=hooks)


@router.get("/jobs/{job_id}/detail")
async def job_detail(request: Request, job_id: str, v: Annotated[Viewer, Depends(viewer)]) -> Response:
    """Status, metrics and rounds: refreshed when the stream ends (and while the job is live)."""
    job = await _job(request, v, job_id)
    if job is None:
        return render.not_found(request, v, f"job {job_id}")
    return render.page(request, "_job_detail.html", v, **job_view(job))


@router.get("/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str, v: Annotated[Viewer, Depends(viewer)]) -> Response:
    if not ids.is_valid("job", job_id):
        return Response(status_code=404)
    try:
        return await events.job_events(request, job_id, v.tenant_id)
    except NotFound:
        return Response(status_code=404)


@router.get("/jobs/{job_id}/media/{index}")
async def media(request: Request, job_id: str, index: int,
                v: Annotated[Viewer, Depends(viewer)]) -> Response:
    """The job's media item ``index``, fetched as the worker fetches it (same URL checks, sniffed
    type), for the preview; at most ``PREVIEW_MAX_BYTES``."""
    job = await _job(request, v, job_id)
    items = list((job.request or {}).get("media") or []) if job is not None else []
    if job is None or not 0 <= index < len(items) or not isinstance(items[index], dict):
        return Response(status_code=404)
    item = items[index]
    config = dataclasses.replace(get_ctx(request).checker.config, max_bytes=PREVIEW_MAX_BYTES, retries=0)

    def fetch() -> tuple[bytes, str]:
        from storage.fetch import open_media

        blob = open_media(str(item.get("url")), config, kind=item.get("type"))
        return blob.read(), blob.mime

    try:
        data, mime = await to_thread.run_sync(fetch)
    except Exception as exc:  # the preview only: say why in the image's place
        code = getattr(exc, "code", type(exc).__name__)
        return Response(f"no preview: {code}", status_code=404, media_type="text/plain")
    return Response(data, media_type=mime, headers={"Cache-Control": "private, max-age=300",
                                                    "X-Content-Type-Options": "nosniff"})


def _webhooks(request: Request, tenant_id: str, job_id: str) -> list[dict[str, Any]]:
    with get_ctx(request).db.session() as session:
        page, attempts = lists.list_webhook_messages(session, tenant_id, job_id=job_id, batch_id=None,
                                                     limit=50)
        return [message_to_dict(m, attempts[m.id]) for m in page.rows]


@router.get("/jobs/{job_id}/webhooks")
async def webhooks(request: Request, job_id: str, v: Annotated[Viewer, Depends(viewer)]) -> Response:
    if await _job(request, v, job_id) is None:
        return render.not_found(request, v, f"job {job_id}")
    hooks = await to_thread.run_sync(_webhooks, request, v.tenant_id, job_id)
    return render.page(request, "_webhooks.html", v, messages=hooks, job_id=job_id)


@router.post("/webhooks/{message_id}/redeliver")
async def redeliver(request: Request, message_id: str,
                    v: Annotated[Viewer, Depends(acting_viewer)]) -> Response:
    """One fresh attempt now, then the job's webhook list again (with the attempt, once made)."""
    error = None
    job_id = None
    if not ids.is_valid("msg", message_id):
        return render.not_found(request, v, f"webhook message {message_id}")
    try:
        response = await webhook_deliveries.redeliver(request, message_id, v.tenant_id)
        job_id = json.loads(bytes(response.body)).get("job_id")
    except NotFound:
        return render.not_found(request, v, f"webhook message {message_id}")
    except CaptionqError as exc:
        error = exc.message
    hooks = await to_thread.run_sync(_webhooks, request, v.tenant_id, job_id) if job_id else []
    return render.page(request, "_webhooks.html", v, messages=hooks, job_id=job_id, error=error,
                       redelivered=message_id)
