"""What the routes share: built once by :func:`api.app.create_app`, kept on ``app.state.ctx``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from api.auth import Authenticator
from api.metrics import Metrics
from api.params import check_path_ids
from api.urlcheck import StorageUrlChecker
from core import logcontext
from core.db import Database
from core.settings import Settings
from jobs.queue import Publisher
from jobs.requests import RequestLimits
from jobs.service import JobService


@dataclass
class AppContext:
    settings: Settings
    db: Database
    publisher: Publisher
    service: JobService
    checker: StorageUrlChecker
    limits: RequestLimits
    auth: Authenticator
    metrics: Metrics


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


async def tenant(request: Request) -> str:
    """Dependency: the caller's tenant id (401 without a valid key). A path id that cannot exist
    is then 404 without a query (:func:`api.params.check_path_ids`)."""
    tenant_id = await get_ctx(request).auth.tenant_for(request)
    check_path_ids(request)
    # The request's log lines (and the threads it hands work to) name the tenant and the job or
    # batch in its path.
    params = request.path_params
    logcontext.set_fields(tenant_id=tenant_id, job_id=params.get("job_id"), batch_id=params.get("batch_id"))
    return tenant_id
