"""Observability's pure parts: redaction, bound log fields, bounded tenant series, the OTEL_*
switch and carriers, the worker's probe server and engine collector."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from core import logcontext, tracing
from core.logging import JsonFormatter, TextFormatter
from core.redact import redact
from core.settings import Settings
from jobs.gauges import bound_tenants
from worker.app import CeleryTaskFields, sends_task_events
from worker.metrics import EngineCollector
from worker.probe import HealthState, start

KEY = "cq_key_0123456789abcdef_S3cr3t-Part_xyz"
HOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw+/zS9hOgmM="


@pytest.mark.parametrize("text, secret", [
    (f"key {KEY} used", "S3cr3t-Part_xyz"),
    (f"signing with {HOOK_SECRET}", "MfKQ9r8GKYqr"),
    ("Authorization: Bearer abcdefghijklmnop0123", "abcdefghijklmnop0123"),
    ("to https://u:pw-123@example.com/hook", "pw-123"),
    ("to https://example.com/hook?a=1&token=tok-999#x", "tok-999"),
    ("get https://b.s3.example.com/k.png?X-Amz-Credential=AKIAEXAMPLE%2F1&X-Amz-Signature=abc123", "abc123"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/2026, Signature=0123456789abcdef0123",
     "0123456789abcdef"),
])
def test_redact_masks_keys_secrets_and_signed_urls(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and "***" in out


def test_redact_keeps_ordinary_text_and_the_key_id() -> None:
    plain = "job job_01abc succeeded: basic settings, s3://bucket/key=value.png?size=3"
    assert redact(plain) == plain
    assert "cq_key_0123456789abcdef_" in redact(KEY)  # the id names the key to revoke


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("worker.pipeline", logging.INFO, __file__, 1, msg, args, None)


def test_bound_fields_reach_every_format_and_are_reset_after_the_block() -> None:
    f = logcontext.ContextFilter()
    with logcontext.bind(job_id="job_1", tenant_id="ten_1", batch_id=None):
        rec = _record("job %s uses %s", "job_1", KEY)
        f.filter(rec)
        data = json.loads(JsonFormatter().format(rec))
        text = TextFormatter().format(rec)
    assert data["job_id"] == "job_1" and data["tenant_id"] == "ten_1" and "batch_id" not in data
    assert "S3cr3t" not in data["message"] and "S3cr3t" not in text
    assert "[job_id=job_1 tenant_id=ten_1]" in text
    after = _record("later")
    f.filter(after)
    assert not hasattr(after, "job_id")


def test_celery_task_lines_get_the_job_id_from_the_task_context() -> None:
    rec = _record("Task %(name)s[%(id)s] received")
    rec.data = {"name": "captionq.caption_job", "id": "job_7"}
    CeleryTaskFields().filter(rec)
    assert rec.job_id == "job_7"  # type: ignore[attr-defined]
    other = _record("x")
    other.data = {"name": "captionq.deliver_webhook", "id": "msg_1"}
    CeleryTaskFields().filter(other)
    assert not hasattr(other, "job_id")


def test_tenant_series_are_bounded() -> None:
    rows = [("ten_a", "queued", 5), ("ten_b", "queued", 3), ("ten_b", "running", 4), ("ten_c", "running", 1),
            ("ten_d", "queued", 1)]
    out = bound_tenants(rows, 2)
    assert out == {("ten_a", "queued"): 5, ("ten_b", "queued"): 3, ("ten_b", "running"): 4,
                   ("other", "running"): 1, ("other", "queued"): 1}
    assert sum(out.values()) == sum(n for *_, n in rows)


@pytest.mark.parametrize("env, on", [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
])
def test_tracing_is_opt_in_by_the_standard_variables(env: dict[str, str], on: bool) -> None:
    assert tracing.configured_by_env(env) is on


def test_a_carrier_round_trips_the_current_span() -> None:
    assert tracing.current_carrier() is None  # no span: nothing stored on the job row
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        with tracing.span("outer") as outer:
            carrier = tracing.current_carrier()
        assert carrier is not None and carrier["traceparent"].split("-")[1] == format(
            outer.get_span_context().trace_id, "032x")
        with tracing.attached(tracing.extract(carrier)), tracing.span("inner"):
            pass
        inner = next(s for s in exporter.get_finished_spans() if s.name == "inner")
        assert inner.parent is not None and inner.parent.span_id == outer.get_span_context().span_id
    finally:
        tracing.use_provider(None)
    assert tracing.extract({"traceparent": "garbage"}) is None


def test_task_events_follow_the_setting() -> None:
    redis = {"broker_url": "redis://localhost:6379/0"}
    assert sends_task_events(Settings(**redis), ["io"])
    assert sends_task_events(Settings(**redis), ["gpu", "io"])
    assert not sends_task_events(Settings(**redis), ["gpu"])
    assert sends_task_events(Settings(**redis, task_events="all"), ["gpu"])
    assert not sends_task_events(Settings(**redis, task_events="off"), ["io"])
    assert not sends_task_events(Settings(), ["io"])  # the local broker has no fanout


def test_probe_server_reports_the_phase_and_serves_metrics() -> None:
    registry = CollectorRegistry()
    health = HealthState(["gpu"], details=lambda: {"model_loaded": False})
    servers = start(metrics_port=0, health_port=None, host="127.0.0.1", registry=registry, health=health)
    servers += start(metrics_port=None, health_port=0, host="127.0.0.1", registry=registry, health=health)
    metrics_url = f"http://127.0.0.1:{servers[0].port}"
    health_url = f"http://127.0.0.1:{servers[1].port}/healthz"
    try:
        r = httpx.get(health_url)
        assert r.status_code == 503
        assert r.json() == {"status": "starting", "queues": ["gpu"], "model_loaded": False}
        health.phase = "ok"
        assert httpx.get(health_url).status_code == 200
        health.phase = "stopping"
        assert httpx.get(health_url).status_code == 503
        assert httpx.get(f"{metrics_url}/metrics").status_code == 200
        assert httpx.get(f"{metrics_url}/healthz").status_code == 404  # its own port only
    finally:
        for s in servers:
            s.close()


def test_engine_collector_exports_counters_gauges_and_rates() -> None:
    stats = {"batches": 3, "requests": 7, "tokens_generated": 120, "decode_steps": 40, "rows_stepped": 100,
             "slots": 8, "kv_budget_tokens": 1000, "kv_tokens_in_use": 250, "running_rows": 2}
    registry = CollectorRegistry()
    registry.register(EngineCollector(lambda: stats, lambda: {"tokens_per_s": 12.5, "batch_occupancy": None}))
    text = generate_latest(registry).decode()
    assert "captionq_engine_batches_total 3.0" in text and "captionq_engine_rows_stepped_total 100.0" in text
    assert "captionq_engine_kv_occupancy 0.25" in text and "captionq_engine_running_rows 2.0" in text
    assert "captionq_engine_tokens_per_s 12.5" in text and "batch_occupancy" not in text
    empty = CollectorRegistry()
    empty.register(EngineCollector(lambda: None, lambda: None))
    assert "captionq_engine" not in generate_latest(empty).decode()


def test_text_lines_without_bound_fields_are_unchanged() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.handle(_record("plain line"))
    assert stream.getvalue().rstrip().endswith("worker.pipeline: plain line")
