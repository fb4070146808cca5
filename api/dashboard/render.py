"""Jinja2 templates for the dashboard and the filters they format numbers and times with."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from api.dashboard.access import Viewer

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def duration(seconds: float | None) -> str:
    """``850 ms``, ``4.2 s``, ``3 min 05 s``, ``2 h 10 min``; ``—`` for None."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def ago(when: datetime | str | None, now: datetime | None = None) -> str:
    if when is None:
        return "—"
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    return duration(max(0.0, ((now or datetime.now(UTC)) - when).total_seconds())) + " ago"


def number(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


templates.env.filters.update(duration=duration, ago=ago, number=number)


# Scripts only from the dashboard's own static files (no inline script, no eval), no framing
# (a framed page could trick a click on Cancel), nothing loaded from elsewhere. Inline styles
# stay allowed: progress bars set their width, htmx adds its indicator style.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; media-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def page(request: Request, name: str, viewer: Viewer | None, status_code: int = 200,
         **context: Any) -> Response:
    """A full page or an htmx partial (templates whose name starts with ``_``)."""
    return templates.TemplateResponse(request, name, {"viewer": viewer, **context},
                                      status_code=status_code, headers=SECURITY_HEADERS)


def not_found(request: Request, viewer: Viewer, what: str) -> Response:
    """Unknown ids and other tenants' ids look the same: not found."""
    return page(request, "not_found.html", viewer, status_code=404, what=what)
