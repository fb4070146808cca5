"""Prometheus metrics: request counts and latencies by route template, jobs by status.

Each app gets its own registry (several apps may live in one test process). Job counts come from
one ``GROUP BY status`` query, cached for ``JOB_COUNT_TTL`` seconds so scrapes stay cheap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.db import Database
from jobs.states import JobStatus
from jobs.tables import Job

JOB_COUNT_TTL = 15.0
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class JobsCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, int]] | None = None

    def counts(self) -> dict[str, int]:
        with self._lock:
            if self._cached and self._cached[0] > time.monotonic():
                return self._cached[1]
        counts = {s.value: 0 for s in JobStatus}
        with self.db.session() as session:
            for status, n in session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)):
                counts[status] = n
        with self._lock:
            self._cached = (time.monotonic() + JOB_COUNT_TTL, counts)
        return counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("captionq_jobs", "Jobs by status (all tenants)", labels=["status"])
        try:
            for status, n in self.counts().items():
                g.add_metric([status], n)
        except Exception:  # a scrape must not fail because the database blinked
            pass
        yield g


class Metrics:
    def __init__(self, db: Database) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("captionq_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("captionq_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=BUCKETS, registry=self.registry)
        self.registry.register(JobsCollector(db))


class MetricsMiddleware:
    """Times every request; the route label is the matched path template (``/v1/jobs/{job_id}``),
    never the raw path, so ids do not explode the label set."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
