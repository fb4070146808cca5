"""One server span per request, continuing a client's W3C ``traceparent`` (:mod:`core.tracing`).

The span is named after the matched route template (``POST /v1/jobs``), known once routing has
run. While tracing is off only a client's ``traceparent`` is carried (cheaply: no span), so that
a job it creates still joins the client's trace in a worker that records spans.
"""

from __future__ import annotations

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import route_template
from core import tracing


class TracingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()
                   if k in (b"traceparent", b"tracestate")}
        parent = tracing.extract(headers)
        if not tracing.active():
            with tracing.attached(parent):
                await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        span = tracing.tracer().start_span(
            f"{method} {scope.get('path', '')}", context=parent, kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope.get("path", "")})
        try:
            with trace.use_span(span, end_on_exit=False):
                await self.app(scope, receive, send_wrapper)
        finally:
            template = route_template(scope)
            span.update_name(f"{method} {template}")
            span.set_attribute("http.route", template)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.StatusCode.ERROR)
            span.end()
