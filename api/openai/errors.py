"""OpenAI's error shape for every answer under ``/openai/v1``.

``{"error": {"message", "type", "param", "code"}}`` with the status codes OpenAI's clients map
to their exceptions (400 ``BadRequestError``, 401 ``AuthenticationError``, 404
``NotFoundError``, 409, 413, 5xx ``InternalServerError``). captionq's own routes keep RFC 9457
problem details: :class:`OpenAIRoute` answers errors inside the route itself, before the app's
exception handlers would see them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from api import problems
from core.errors import InvalidRequest, TooManyRequests
from jobs import storable

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class OpenAIError(Exception):
    """An error raised by the facade's own checks (a parameter captionq has no equivalent for)."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = "invalid_request") -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


def error_body(message: str, *, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    type_ = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = error_body(message, type_=type_, param=param, code=code)
    return JSONResponse(storable.scrub(body), status_code=status, headers=headers)


def _param(loc: list[Any]) -> str | None:
    """A captionq error location (``generation.max_new_tokens``) as an OpenAI ``param``."""
    names = {"max_new_tokens": "max_tokens", "system_prompt": "messages", "prompts": "messages",
             "media": "messages"}
    parts = [str(p) for p in loc]
    for p in reversed(parts):
        if p in names:
            return names[p]
    return ".".join(parts) or None


def response_for(exc: BaseException) -> JSONResponse:
    """The OpenAI-shaped answer to any exception a facade route raised."""
    if isinstance(exc, OpenAIError):
        return openai_error(exc.status, exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, HTTPException):
        return openai_error(exc.status_code, str(exc.detail), code=None)
    if isinstance(exc, RequestValidationError):
        errs = exc.errors()
        loc = [str(p) for p in (errs[0].get("loc", ()) if errs else ()) if p not in ("body", "query")]
        return openai_error(400, str(errs[0].get("msg")) if errs else "invalid request",
                            param=".".join(loc) or None, code="invalid_request")
    err, message = problems.resolve(exc)
    status = err.http_status
    param = None
    if isinstance(err, InvalidRequest):
        status = 400  # OpenAI answers every invalid request 400 (BadRequestError)
        if err.errors:
            param = _param(list(err.errors[0].get("loc", [])))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(err, TooManyRequests):  # Retry-After and the RateLimit fields
        headers = err.headers
    code = "invalid_api_key" if status == 401 else err.code
    return openai_error(status, message, param=param, code=code, headers=headers)


class OpenAIRoute(APIRoute):
    """A route whose errors (its dependencies' too) are answered in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return response_for(exc)

        return openai_handler
