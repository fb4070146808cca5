"""The FastAPI application: ``create_app(settings)``.

Built from a :class:`Settings` made at the entry point (``captionq serve`` / ``up``); nothing
here reads the environment except :func:`app_from_env`, uvicorn's factory for multi-process
serving. The API never imports torch or the worker package.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from api import openapi, problems
from api.auth import Authenticator
from api.body import BodyLimitMiddleware
from api.context import AppContext
from api.context_limit import request_limits
from api.metrics import Metrics, MetricsMiddleware
from api.params import storable_params
from api.ratelimit import RateLimiter, RateLimitHeaders
from api.tracing import TracingMiddleware
from api.urlcheck import StorageUrlChecker
from core.db import Database
from core.settings import Settings
from jobs.outbox_cleaner import OutboxCleaner
from jobs.queue import Publisher
from jobs.service import JobService
from jobs.tenants import ensure_local_tenant

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Asynchronous captioning and visual question answering jobs with InternVL2. "
    "Errors are RFC 9457 problem details with a stable `code`. Every request accepts a W3C "
    "`traceparent` header: with tracing on (OpenTelemetry, the standard `OTEL_*` variables) the "
    "request's span and the work of a job it creates continue that trace."
)


def create_app(
    settings: Settings, *, db: Database | None = None, publisher: Publisher | None = None
) -> FastAPI:
    db = db or Database(settings)
    publisher = publisher or Publisher.from_settings(settings)
    service = JobService(db, settings, publisher)
    ctx = AppContext(
        settings=settings, db=db, publisher=publisher, service=service,
        checker=StorageUrlChecker(settings),
        limits=request_limits(settings),
        auth=Authenticator(db, settings),
        metrics=Metrics(db, publisher, settings.registry, settings.worker_dead_seconds),
        limiter=RateLimiter(settings),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.auth == "disabled":
            await to_thread.run_sync(_ensure_local_tenant, db)
        service.cleaner = OutboxCleaner(db)  # published rows are deleted after the response
        yield
        await to_thread.run_sync(service.cleaner.close)
        service.cleaner = None
        hub = getattr(_app.state, "captionq_live_hub", None)  # SSE's shared pub/sub, if used
        if hub is not None:
            await hub.close()
        await ctx.limiter.close()
        publisher.close()
        db.dispose()

    # Swagger UI (/docs) and ReDoc (/redoc) with their assets served from the package, not a CDN.
    app = FastAPIOffline(title="captionq", version="1", description=DESCRIPTION, lifespan=lifespan,
                         docs_url="/docs", redoc_url="/redoc", openapi_url="/openapi.json",
                         static_url="/docs-assets", dependencies=[Depends(storable_params)])
    app.state.ctx = ctx
    problems.install(app)
    openapi.install(app)

    from api.routes import batches, events, jobs, keys, models, ops, usage, webhook_deliveries, workers

    for module in (ops, jobs, batches, events, webhook_deliveries, workers, models, keys, usage):
        app.include_router(module.router)
    from api.openai import batches as openai_batches
    from api.openai import files as openai_files
    from api.openai import routes as openai_routes

    for openai_module in (openai_files, openai_batches, openai_routes):  # routes' catch-all last
        app.include_router(openai_module.router)
    # Added innermost first: metrics see every request, the body cap applies before any route
    # reads, and an unexpected error is answered inside them all.
    app.add_middleware(problems.CatchAllMiddleware)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics)
    # Outermost: the request's span (and a client's traceparent) is current in everything below.
    app.add_middleware(TracingMiddleware)
    return app


def _ensure_local_tenant(db: Database) -> None:
    with db.session() as session:
        ensure_local_tenant(session)


def app_from_env() -> FastAPI:
    """uvicorn factory (``api.app:app_from_env``) for ``captionq serve --workers N``."""
    from core import tracing
    from core.logging import setup_logging
    from core.settings import load_settings

    settings = load_settings()
    setup_logging(settings)
    tracing.setup("captionq-api")
    return create_app(settings)
