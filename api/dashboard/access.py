"""Who is looking at the dashboard: the tenant of the session's API key.

Pages without a valid session redirect to the sign-in form (an htmx request gets
``HX-Redirect``, so a partial never swaps a login page into a table). With
``CAPTIONQ_AUTH=disabled`` (local mode) every visitor is the local tenant, as on the API.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from api.context import AppContext, get_ctx
from api.dashboard.session import COOKIE, SessionCodec
from core.errors import CaptionqError, Unauthorized
from jobs.tenants import LOCAL_TENANT_ID

LOCAL_COOKIE = "local"  # what the CSRF token is derived from when there is no session


class NeedLogin(Exception):
    """No valid session: the dashboard's handler answers with the sign-in page."""


class BadCsrf(CaptionqError):
    http_status = 403
    code = "csrf_failed"
    title = "The form's CSRF token is missing or wrong"


@dataclass(frozen=True)
class Viewer:
    tenant_id: str
    csrf: str
    operator: bool


def codec(request: Request) -> SessionCodec:
    return request.app.state.dashboard_sessions  # type: ignore[no-any-return]


def can_operate(ctx: AppContext, tenant_id: str) -> bool:
    """Whether this tenant sees the operator pages (the fleet). The one place that decides.

    The fleet page shows what ``GET /v1/workers`` already shows every tenant, plus the queue
    depths summed over all tenants (counts and ages, never jobs), so every signed-in tenant may
    see it."""
    return True


async def tenant_of_key(ctx: AppContext, key: str) -> str | None:
    """The tenant of ``key`` checked exactly as an ``Authorization: Bearer`` header is (the same
    authenticator, cache and rules), None when it is not a valid key."""
    if not key or len(key) > 200:
        return None
    scope = {"type": "http", "method": "GET", "path": "/dashboard", "query_string": b"",
             "headers": [(b"authorization", b"Bearer " + key.encode())]}
    try:
        return await ctx.auth.tenant_for(Request(scope))
    except Unauthorized:
        return None


async def viewer(request: Request) -> Viewer:
    """Dependency for every dashboard route but sign-in."""
    ctx = get_ctx(request)
    sessions = codec(request)
    if ctx.auth.disabled:
        return Viewer(LOCAL_TENANT_ID, sessions.csrf_token(LOCAL_COOKIE), can_operate(ctx, LOCAL_TENANT_ID))
    raw = request.cookies.get(COOKIE)
    session = sessions.decode(raw)
    if session is None or raw is None:
        raise NeedLogin()
    tenant_id = await tenant_of_key(ctx, session.api_key)
    if tenant_id is None:
        raise NeedLogin()
    return Viewer(tenant_id, sessions.csrf_token(raw), can_operate(ctx, tenant_id))


async def checked_viewer(request: Request) -> Viewer:
    """:func:`viewer` for routes that change something: the CSRF token must match too."""
    v = await viewer(request)
    token = request.headers.get("x-csrf-token")
    if token is None and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        token = str((await request.form()).get("csrf") or "") or None
    if not token or token != v.csrf:
        raise BadCsrf("reload the page and try again")
    return v
