"""Timestamps along one job's path, for ``bench/profile_job_path.py`` (a profiling aid only).

``install()`` wraps the functions a job passes through (API, job service, outbox, publisher,
worker pipeline, batcher, engine, live events) and SQLAlchemy's statement and commit hooks, and
appends ``<label> <pid> <thread> <time>`` lines to ``$CAPTIONQ_TRACE_FILE``. Times are
``time.perf_counter()`` (CLOCK_MONOTONIC on Linux: comparable across processes). Nothing in the
service imports this; the worker subprocess gets it through ``bench/bench_site`` on
``PYTHONPATH`` (a ``sitecustomize``).
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
from typing import Any

_fd: int | None = None
_role = "w"  # prefixes the labels of the shared SQL hooks: "api" or "w"


def mark(label: str) -> None:
    if _fd is None:
        return
    t = time.perf_counter()
    thread = threading.current_thread().name.replace(" ", "_")
    os.write(_fd, f"{label} {os.getpid()} {thread} {t:.6f}\n".encode())


def _wrap(owner: Any, attr: str, label: str) -> None:
    fn = getattr(owner, attr)
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def awrapper(*a: Any, **k: Any) -> Any:
            mark(f"{label}>")
            try:
                return await fn(*a, **k)
            finally:
                mark(f"{label}<")
        setattr(owner, attr, awrapper)
        return

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        mark(f"{label}>")
        try:
            return fn(*a, **k)
        finally:
            mark(f"{label}<")
    setattr(owner, attr, wrapper)


def _sql_hooks() -> None:
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    @event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        mark(f"{_role}:sql:" + statement.split(None, 1)[0].upper() + ">")

    @event.listens_for(sa.engine.Engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        mark(f"{_role}:sql:" + statement.split(None, 1)[0].upper() + "<")

    _wrap(Session, "commit", f"{_role}:commit")
    from sqlalchemy.engine.default import DefaultDialect

    _wrap(DefaultDialect, "do_ping", f"{_role}:ping")
    try:
        from sqlalchemy.dialects.postgresql._psycopg_common import _PGDialect_common_psycopg

        _wrap(_PGDialect_common_psycopg, "do_ping", f"{_role}:ping")
    except ImportError:
        pass


def install_api() -> None:
    import api.routes.events as events
    import api.routes.jobs as routes_jobs
    from api.auth import Authenticator
    from api.metrics import MetricsMiddleware
    from jobs import live, outbox
    from jobs.queue import Publisher
    from jobs.service import JobService

    _wrap(MetricsMiddleware, "__call__", "api:request")
    _wrap(Authenticator, "tenant_for", "api:auth")
    _wrap(routes_jobs, "normalize_job_request", "api:normalize")
    _wrap(JobService, "submit", "api:submit")
    _wrap(JobService, "get", "api:get")
    _wrap(Publisher, "send_many", "api:send")
    _wrap(outbox, "delete_rows", "api:outbox_delete")
    _wrap(events, "_job", "sse:job")
    _wrap(live, "decode", "sse:pubsub_msg")
    _wrap(events, "_changes", "sse:changes")
    import api.routes.jobs as jobs_routes
    import api.waiting as waiting
    from api.live_hub import LiveHub

    _wrap(jobs_routes, "create_once", "api:create_once")
    _wrap(waiting, "wait_terminal", "api:wait_terminal")
    _wrap(waiting, "subscribe", "api:subscribe")
    _wrap(LiveHub, "_dispatch", "api:hub_dispatch")


def install_worker() -> None:
    from celery import signals

    import worker.pipeline as pipeline
    from jobs.live import LivePublisher
    from jobs.service import JobService
    from models.batcher import Batcher
    from models.engine import Engine

    signals.task_received.connect(lambda **k: mark("w:task_received"), weak=False)
    signals.task_prerun.connect(lambda **k: mark("w:prerun"), weak=False)
    signals.task_postrun.connect(lambda **k: mark("w:postrun"), weak=False)
    _wrap(pipeline, "run_caption_job", "w:run")
    _wrap(JobService, "start", "w:claim")
    _wrap(JobService, "succeed_job", "w:succeed")
    _wrap(JobService, "is_cancel_requested", "w:cancel_poll")
    _wrap(JobService, "set_partial_text", "w:partial")
    _wrap(LivePublisher, "status", "w:live_status")
    _wrap(LivePublisher, "done", "w:live_done")
    _wrap(LivePublisher, "tokens", "w:live_tokens")
    _wrap(LivePublisher, "_send_done", "w:live_done_sent")
    _wrap(Batcher, "submit", "w:batcher_submit")
    _wrap(Engine, "prepare", "w:engine_prepare")
    _wrap(Engine, "generate_batch", "w:generate")


def install(role: str) -> None:
    global _fd, _role
    path = os.environ.get("CAPTIONQ_TRACE_FILE")
    if not path:
        return
    _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _role = "api" if role == "api" else "w"
    _sql_hooks()
    if role == "api":
        install_api()
    else:
        install_worker()
