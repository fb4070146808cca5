"""RFC 9457 problem details for every error the API returns.

One place maps exceptions to ``application/problem+json`` bodies
``{type, title, status, detail, code}`` (+ ``errors: [{loc, msg}]`` for 422): our
:class:`core.errors.CaptionqError` hierarchy, foreign errors carrying ``code``/``retryable``
(storage, models) through :func:`core.errors.as_captionq_error`, FastAPI's request validation,
Starlette's routing errors (404, 405) and anything unexpected (500, logged, no internals shown).

A database or broker that cannot be reached is ``503 unavailable`` with ``Retry-After`` on every
route (:func:`is_outage`). An unexpected error is answered by :class:`CatchAllMiddleware`, inside
Starlette's ``ServerErrorMiddleware``: that one answers and then re-raises, which makes the
server close the keep-alive connection under the client's next request.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import CaptionqError, InvalidRequest, ServiceUnavailable, TooManyRequests, as_captionq_error
from jobs import storable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_STATUS_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Missing or invalid API key"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_content_type", "Unsupported content type"),
    422: ("invalid_request", "Invalid request"),
    429: ("too_many_requests", "Too many requests"),
    503: ("unavailable", "Service temporarily unavailable"),
}


def problem(status: int, code: str, title: str, detail: str, *, errors: list[dict[str, Any]] | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:captionq:problem:{code}", "title": title, "status": status, "detail": detail,
        "code": code,
    }
    if errors is not None or status == 422:
        body["errors"] = [{"loc": list(e.get("loc", [])), "msg": str(e.get("msg", "")),
                           **({"code": e["code"]} if e.get("code") else {})} for e in (errors or [])]
    body.update(extra)
    # Messages may quote the client's input: a lone surrogate there could not be encoded.
    return JSONResponse(storable.scrub(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


RETRY_AFTER_SECONDS = 5
_CORE_MEMBERS = frozenset({"type", "title", "status", "detail", "code", "errors"})


def is_outage(exc: BaseException) -> bool:
    """The database or the broker cannot be reached (connection refused, dropped, timed out,
    the server shutting down): a retry later may succeed, so it is 503, not 500."""
    import kombu.exceptions
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (
        sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError,
        kombu.exceptions.OperationalError, *_redis_outages(), ConnectionError, TimeoutError,
    ))


def _redis_outages() -> tuple[type[Exception], ...]:
    try:  # the embedded local mode (SQLite, filesystem broker) runs without the redis client
        import redis.exceptions
    except ImportError:
        return ()
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def resolve(exc: BaseException) -> tuple[CaptionqError, str]:
    """The captionq error an exception is answered as, and the message a client may read: a
    database or broker outage is ``ServiceUnavailable``; anything unexpected is logged with its
    traceback and shown only as "internal error" (its text may hold addresses or data)."""
    if is_outage(exc):
        log.warning("dependency unavailable: %s: %s", type(exc).__name__, str(exc).splitlines()[0][:200])
        exc = ServiceUnavailable("the database or the message broker cannot be reached right now; "
                                 "retry later")
    err = as_captionq_error(exc)
    if err.http_status >= 500 and not isinstance(exc, CaptionqError):
        log.exception("unexpected error", exc_info=exc)
        return err, "internal error"
    return err, err.message


def error_response(exc: BaseException) -> JSONResponse:
    err, detail = resolve(exc)
    status = err.http_status
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if err.retryable and status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if isinstance(err, TooManyRequests):
        headers = err.headers
    errors = err.errors if isinstance(err, InvalidRequest) else None
    # Members an error adds (a quota's limit and use, RFC 9457 extension members); never the core ones.
    extra = {k: v for k, v in err.extra.items() if k not in _CORE_MEMBERS}
    return problem(status, err.code, err.title, detail, errors=errors, headers=headers, **extra)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        loc = list(e.get("loc", ()))
        if loc and loc[0] == "body":
            loc = loc[1:]
        out.append({"loc": loc, "msg": e.get("msg", "invalid")})
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(CaptionqError)
    async def _ours(_request: Request, exc: CaptionqError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = _validation_errors(exc)
        where = ".".join(str(p) for p in errs[0]["loc"]) if errs else "request"
        detail = f"{where}: {errs[0]['msg']}" if errs else "invalid request"
        return problem(422, "invalid_request", "Invalid request", detail, errors=errs)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title = _STATUS_CODES.get(exc.status_code, ("error", "Error"))
        detail = str(exc.detail) if exc.detail else title
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem(exc.status_code, code, title, detail, headers=getattr(exc, "headers", None))

    for outage in _outage_types():
        app.add_exception_handler(outage, _outage_handler)


def _outage_types() -> tuple[type[Exception], ...]:
    import kombu.exceptions
    import sqlalchemy.exc

    return (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError, kombu.exceptions.OperationalError,
            *_redis_outages(), ConnectionError, TimeoutError)


async def _outage_handler(_request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)  # 503 for an outage; any other driver error is a plain 500


class CatchAllMiddleware:
    """Answers an unexpected exception with a 500 problem and lets the connection live on.

    Added as the innermost middleware; when the response had already started (a stream broke
    off) there is nothing left to answer and the exception goes on to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            await error_response(exc)(scope, receive, send)
