"""Wiring: the dashboard's routers, static files, session codec and sign-in handling."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.responses import JSONResponse

from api.context import get_ctx
from api.dashboard import access, render
from api.dashboard.access import NeedLogin, Viewer, checked_viewer
from api.dashboard.session import COOKIE, COOKIE_PATH, SessionCodec, load_secret
from core.settings import Settings

router = APIRouter(prefix="/dashboard", include_in_schema=False)


def install(app: FastAPI, settings: Settings) -> None:
    from api.dashboard import batch_pages, fleet_page, job_pages, overview_page

    secret = load_secret(settings.session_secret, settings.data_dir)
    app.state.dashboard_sessions = SessionCodec(secret, settings.dashboard_session_hours * 3600)
    static = StaticFiles(directory=str(render.HERE / "static"))
    app.mount("/dashboard/static", static, name="dashboard-static")
    for module in (overview_page, batch_pages, job_pages, fleet_page):
        app.include_router(module.router)
    app.include_router(router)
    app.add_exception_handler(NeedLogin, _to_login)  # type: ignore[arg-type]


async def _to_login(request: Request, _exc: NeedLogin) -> Response:
    target = "/dashboard/login"
    if request.method == "GET" and request.url.path not in ("/dashboard", "/dashboard/"):
        target += "?next=" + quote(request.url.path, safe="")
    if request.headers.get("hx-request"):
        return JSONResponse({"detail": "sign in again"}, status_code=401, headers={"HX-Redirect": target})
    if request.url.path.endswith("/events"):  # an EventSource cannot follow a redirect usefully
        return Response(status_code=401)
    return RedirectResponse(target, status_code=303)


def _safe_next(value: str | None) -> str:
    """Only a dashboard path (never another site) after signing in."""
    if value and value.startswith("/dashboard/") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard/overview"


@router.get("")
@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/dashboard/overview", status_code=303)


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    if get_ctx(request).auth.disabled:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render.page(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login")
async def login(request: Request, api_key: Annotated[str, Form()] = "",
                next: Annotated[str, Form()] = "") -> Response:
    """Check the key like a Bearer key; a good one becomes the session cookie."""
    ctx = get_ctx(request)
    key = api_key.strip()
    who = await access.principal_of_key(ctx, key) if key else None
    if who is None:
        return render.page(request, "login.html", None, status_code=401, next=_safe_next(next),
                           error="That API key is not valid.")
    if "read" not in who.scopes:
        return render.page(request, "login.html", None, status_code=403, next=_safe_next(next),
                           error="That API key lacks the read scope the dashboard needs.")
    value = access.codec(request).encode(key)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, value, max_age=int(access.codec(request).lifetime), path=COOKIE_PATH,
                        httponly=True, samesite="lax", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(_viewer: Annotated[Viewer, Depends(checked_viewer)]) -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response
