"""Who is looking at the dashboard: the key of the session, checked as a Bearer key is.

The key's scopes decide as on the API: ``read`` to see the pages (sign-in refuses a key without
it), ``submit`` for the buttons that change something (cancel, redeliver; hidden without it),
``admin`` for the operator pages (the fleet). Pages without a valid session redirect to the
sign-in form (an htmx request gets ``HX-Redirect``, so a partial never swaps a login page into a
table). With ``CAPTIONQ_AUTH=disabled`` (local mode) every visitor is the local tenant with
every scope, as on the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from api.auth import Principal
from api.context import AppContext, get_ctx
from api.dashboard.session import COOKIE, SessionCodec
from core.errors import CaptionqError, InsufficientScope, Unauthorized

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
    scopes: frozenset[str]

    @property
    def operator(self) -> bool:
        return can_operate(self.scopes)

    @property
    def can_change(self) -> bool:
        return "submit" in self.scopes


def can_operate(scopes: frozenset[str]) -> bool:
    """Whether the viewer sees the operator pages (the fleet): keys with the ``admin`` scope."""
    return "admin" in scopes


def codec(request: Request) -> SessionCodec:
    return request.app.state.dashboard_sessions  # type: ignore[no-any-return]


async def principal_of_key(ctx: AppContext, key: str | None) -> Principal | None:
    """The caller ``key`` makes, checked exactly as an ``Authorization: Bearer`` header is (the
    same authenticator, cache and rules); None when it is not a valid key. ``key`` None: local
    mode's principal."""
    headers: list[tuple[bytes, bytes]] = []
    if key is not None:
        if not key or len(key) > 200:
            return None
        headers.append((b"authorization", b"Bearer " + key.encode()))
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/dashboard", "query_string": b"",
                             "headers": headers}
    try:
        return await ctx.auth.principal_for(Request(scope))
    except Unauthorized:
        return None


async def viewer(request: Request) -> Viewer:
    """Dependency for every dashboard route but sign-in."""
    ctx = get_ctx(request)
    sessions = codec(request)
    if ctx.auth.disabled:
        local = await principal_of_key(ctx, None)
        assert local is not None
        return Viewer(local.tenant_id, sessions.csrf_token(LOCAL_COOKIE), local.scopes)
    raw = request.cookies.get(COOKIE)
    session = sessions.decode(raw)
    if session is None or raw is None:
        raise NeedLogin()
    who = await principal_of_key(ctx, session.api_key)
    if who is None or "read" not in who.scopes:  # revoked, or its read scope taken away
        raise NeedLogin()
    return Viewer(who.tenant_id, sessions.csrf_token(raw), who.scopes)


async def checked_viewer(request: Request) -> Viewer:
    """:func:`viewer` for a form that changes something: the CSRF token must match too."""
    v = await viewer(request)
    token = request.headers.get("x-csrf-token")
    if token is None and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        token = str((await request.form()).get("csrf") or "") or None
    if not token or token != v.csrf:
        raise BadCsrf("reload the page and try again")
    return v


async def acting_viewer(request: Request) -> Viewer:
    """:func:`checked_viewer` for the buttons (cancel, redeliver): the key also needs the
    ``submit`` scope, as ``POST /v1/…`` does (403 ``insufficient_scope``)."""
    v = await checked_viewer(request)
    if not v.can_change:
        raise InsufficientScope("this API key lacks the 'submit' scope (it may only look)")
    return v
