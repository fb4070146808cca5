"""OpenTelemetry traces, opt-in through the standard ``OTEL_*`` variables.

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an OTLP endpoint
is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``);
``OTEL_SDK_DISABLED=true`` turns it off. The SDK reads the rest itself: ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` (and its argument), the exporter's endpoint
and headers. OTLP is sent over HTTP/protobuf.

One trace per job: the API's request span (continuing a client's ``traceparent``) is stored on
the job row as a W3C carrier (``jobs.trace_context``) when the job is created; the worker that
claims the job continues that trace with a ``broker wait`` span (from submission to the claim)
and the job's stages (``prepare``, ``engine``, ``record``). Storing it on the row rather than in
the message headers keeps it across the sweeper's re-sends and redeliveries.

While tracing is off nothing here costs more than a check: no spans, no carrier on the row
(except a client's own ``traceparent``, which is kept so that a worker with tracing on continues
the client's trace).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

TRACER_NAME = "captionq"
_PROPAGATOR = TraceContextTextMapPropagator()
# A provider given to this module (tests: an in-memory exporter), instead of the global one.
_provider: trace.TracerProvider | None = None


def configured_by_env(env: dict[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces."""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return any(e.strip().lower() not in ("", "none") for e in exporters.split(","))
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(service_name: str) -> bool:
    """Install the SDK's tracer provider with the exporters ``OTEL_TRACES_EXPORTER`` names
    (default ``otlp``) when the environment asks for traces; returns whether tracing is on.
    Called once per process by the entry points (``serve``, its workers, ``worker``)."""
    if active():
        return True
    if not configured_by_env():
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    names = [e.strip().lower() for e in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
                log.warning("OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is installed; using it")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name == "console":
            exporter = ConsoleSpanExporter()
        elif name in ("", "none"):
            continue
        else:
            log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored (otlp, console)", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s spans exported by %s", service_name, ",".join(names))
    return True


def use_provider(provider: trace.TracerProvider | None) -> None:
    """Record captionq's spans with ``provider`` (None: back to the global provider). The
    global one can be set only once per process; a test sets and removes its own here."""
    global _provider
    _provider = provider


def active() -> bool:
    """Whether spans are recorded in this process (an SDK provider is installed)."""
    return _provider is not None or hasattr(trace.get_tracer_provider(), "add_span_processor")


def tracer() -> trace.Tracer:
    return (_provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)


# --- carriers: the context stored on a job row ---------------------------------------------------
def current_carrier() -> dict[str, str] | None:
    """The current span's context as W3C headers (``traceparent``), or None without one."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier or None


def extract(carrier: dict[str, Any] | None) -> otel_context.Context | None:
    """The context a carrier (or request headers) holds; None when it holds none valid."""
    if not carrier:
        return None
    ctx = _PROPAGATOR.extract({k.lower(): str(v) for k, v in carrier.items()})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


@contextmanager
def attached(ctx: otel_context.Context | None) -> Iterator[None]:
    """Make ``ctx`` the current context for the block (nothing when None)."""
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def span(name: str, *, kind: trace.SpanKind = trace.SpanKind.INTERNAL, **attributes: Any) -> Any:
    """A span for the block, current inside it; a no-op context while tracing is off."""
    if not active():
        return nullcontext()
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    return tracer().start_as_current_span(name, kind=kind, attributes=attrs)


def past_span(name: str, start: datetime, end: datetime, parent: otel_context.Context | None,
              **attributes: Any) -> None:
    """Record a span that already happened (``broker wait``: from submission to the claim)."""
    if not active():
        return
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    s = tracer().start_span(name, context=parent, start_time=_ns(start), attributes=attrs)
    s.end(end_time=max(_ns(end), _ns(start)))


def _ns(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000_000)


def trace_id() -> str | None:
    """The current trace's id in hex (for log lines), None outside a recorded trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
