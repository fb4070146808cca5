"""Operations: ``/healthz``, ``/readyz``, ``/metrics``; and ``/v1/webhook-deliveries``."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import sqlalchemy as sa
from anyio import fail_after, to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.context import get_ctx, tenant
from api.params import check_id
from api.problems import problem
from core.errors import InvalidRequest, NotFound
from jobs import lists
from jobs.heartbeats import live_count
from jobs.tables import Batch, Job
from jobs.webhooks import message_to_dict

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/healthz", tags=["ops"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"],
            summary="The database and the broker answer, and a GPU worker is alive")
async def readyz(request: Request) -> JSONResponse:
    """``{"status": "ready", "checks": {"database": "ok", "broker": "ok", "workers": "ok"}}``;
    else 503 problem+json with the same ``checks``, each ``ok``, ``unavailable`` or, for
    ``workers``, ``none`` (no GPU worker heartbeat within ``worker_dead_seconds``). Never a
    dependency's address or driver error: the logs have those."""
    ctx = get_ctx(request)
    settings = ctx.settings
    live = 0

    def workers() -> None:
        nonlocal live
        live = live_count(ctx.db, settings.worker_dead_seconds)

    checks: dict[str, str] = {}
    for name, fn in (("database", ctx.db.ping), ("broker", ctx.publisher.check), ("workers", workers)):
        if name == "workers" and checks["database"] != "ok":
            checks[name] = "unavailable"
            continue
        try:
            with fail_after(5):
                await to_thread.run_sync(fn, abandon_on_cancel=True)
            checks[name] = "ok" if name != "workers" or live else "none"
        except Exception as exc:
            log.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "unavailable"
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    bad = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    return problem(503, "unavailable", "Service not ready", f"not ready: {bad}", checks=checks,
                   headers={"Retry-After": "5"})


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    ctx = get_ctx(request)
    body = await to_thread.run_sync(lambda: generate_latest(ctx.metrics.scrape()))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/webhook-deliveries", tags=["webhooks"], summary="Webhook messages and their attempts")
async def webhook_deliveries(
    request: Request, tenant_id: Annotated[str, Depends(tenant)],
    job_id: str | None = None, batch_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=lists.MAX_LIMIT)] = lists.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> dict[str, Any]:
    ctx = get_ctx(request)
    if (job_id is None) == (batch_id is None):
        msg = "give exactly one of job_id and batch_id"
        raise InvalidRequest(msg, errors=[{"loc": ["query", "job_id"], "msg": msg}])
    check_id(job_id, "job", "job")
    check_id(batch_id, "bat", "batch")

    def run() -> dict[str, Any]:
        with ctx.db.session() as session:
            model: Any = Job if job_id is not None else Batch
            owner = session.scalar(sa.select(model.tenant_id).where(model.id == (job_id or batch_id)))
            if owner != tenant_id:
                raise NotFound(f"no {'job' if job_id else 'batch'} {(job_id or batch_id)!r}")
            page, attempts = lists.list_webhook_messages(session, tenant_id, job_id=job_id, batch_id=batch_id,
                                                         limit=limit, cursor=cursor)
            return {"object": "list", "data": [message_to_dict(m, attempts[m.id]) for m in page.rows],
                    "next_cursor": page.next_cursor}

    return await to_thread.run_sync(run)  # type: ignore[no-any-return]
