"""Request bodies: a byte cap enforced while reading (Content-Length or chunked), JSON parsing
with a nesting limit, and the content-type check.

The cap (``settings.max_request_bytes``) is an ASGI middleware: a declared Content-Length over it
is refused before anything is read; a chunked body is counted as it arrives and refused the
moment it passes the cap. JSON is parsed by pydantic-core (Rust), which refuses nesting deeper
than ``MAX_JSON_DEPTH`` instead of recursing: 422 ``json_too_deep``.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem
from core.errors import InvalidJson, JsonTooDeep, PayloadTooLarge, UnsupportedContentType
from jobs import storable

MAX_JSON_DEPTH = 200  # pydantic-core's recursion limit; metadata has its own, smaller one


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    resp = problem(413, "payload_too_large", "Request body too large",
                                   f"the body is {declared} bytes; the limit is {self.max_bytes}")
                    await resp(scope, receive, send)
                    return
        received = 0
        limit = self.max_bytes

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"the body is longer than the limit of {limit} bytes")
            return message

        await self.app(scope, limited, send)


def _json_content_type(value: str | None) -> bool:
    if not value:
        return True  # no header: take it as JSON
    mime = value.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


async def read_json(request: Request) -> Any:
    if not _json_content_type(request.headers.get("content-type")):
        raise UnsupportedContentType(
            f"Content-Type {request.headers.get('content-type')!r} is not application/json")
    body = await request.body()
    value = parse_json(body)
    storable.check(value, [])  # NUL or a lone surrogate: 422 naming the field, not a driver error
    return value


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise InvalidJson("the request body is empty; expected a JSON object")
    try:
        return pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        text = str(exc)
        if any(w in text for w in ("surrogate", "hex escape", "unicode code point")):
            return _parse_with_surrogates(body)
        if "recursion limit" in text:
            raise JsonTooDeep(
                f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                errors=[{"loc": [], "msg": f"nesting deeper than {MAX_JSON_DEPTH} levels"}],
            ) from None
        raise InvalidJson(f"the request body is not valid JSON: {text}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_with_surrogates(body: bytes) -> Any:
    """Valid JSON whose strings escape a lone surrogate (``"\\ud800"``), which pydantic-core
    refuses: parsed by the standard library so the storable check can name the field (422
    ``unsupported_character``) instead of calling the body malformed."""
    try:
        return json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise JsonTooDeep(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidJson(f"the request body is not valid JSON: {exc}") from None
