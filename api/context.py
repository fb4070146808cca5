"""What the routes share: built once by :func:`api.app.create_app`, kept on ``app.state.ctx``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.auth import Authenticator, Principal
from api.metrics import Metrics
from api.params import check_path_ids
from api.ratelimit import STATE_KEY, RateLimiter
from api.urlcheck import StorageUrlChecker
from core import logcontext
from core.db import Database
from core.settings import Settings
from jobs.admission import Admission
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
    limiter: RateLimiter


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def principal(request: Request) -> Principal:
    """Dependency: the authenticated caller (401 without a valid key): tenant id, key id, scopes
    and limits. A path id that cannot exist is then 404 without a query
    (:func:`api.params.check_path_ids`); a POST is then rate limited (429, api/ratelimit.py).
    FastAPI runs it once per request however many dependencies ask for it."""
    ctx = get_ctx(request)
    who = await ctx.auth.principal_for(request)
    check_path_ids(request)
    if request.method not in READ_METHODS:  # POSTs spend a token of the tenant's and the key's buckets
        decision = await ctx.limiter.check(who.tenant_id, who.key_id, who.limits)
        if decision is not None:
            setattr(request.state, STATE_KEY, decision.headers)
    # The request's log lines (and the threads it hands work to) name the tenant and the job or
    # batch in its path.
    params = request.path_params
    logcontext.set_fields(tenant_id=who.tenant_id, job_id=params.get("job_id"),
                          batch_id=params.get("batch_id"))
    return who


async def tenant(request: Request, who: Annotated[Principal, Depends(principal)]) -> str:
    """Dependency: the caller's tenant id, for a key with the ``read`` scope (GET) or the
    ``submit`` scope (POST and other writes); else 403 ``insufficient_scope``."""
    who.require("read" if request.method in READ_METHODS else "submit")
    return who.tenant_id


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits only keys with ``scope`` (403 ``insufficient_scope``)."""

    async def dependency(who: Annotated[Principal, Depends(principal)]) -> Principal:
        who.require(scope)
        return who

    dependency.__name__ = f"require_{scope}_scope"
    return dependency


def admission(who: Principal) -> Admission:
    """What a submission needs to know of its caller: the key (usage per key) and the limits."""
    return Admission(key_id=who.key_id, limits=who.limits)


# For route signatures: ``who: AdminPrincipal`` admits only keys with the ``admin`` scope.
AnyPrincipal = Annotated[Principal, Depends(principal)]
AdminPrincipal = Annotated[Principal, Depends(require_scope("admin"))]
