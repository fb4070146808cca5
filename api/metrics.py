"""Prometheus metrics of the API: requests and latency by route template (per process; summed
over every ``serve`` process in multiprocess mode, see :mod:`core.prometheus`) and the fleet's
gauges computed at scrape time from the database and the broker (:mod:`jobs.gauges`).

Each app gets its own registry for its per-process metrics (several apps may live in one test
process). The fleet gauges come from a few aggregate queries cached for ``FLEET_TTL`` seconds so
that scrapes stay cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.db import Database, utcnow
from core.prometheus import BUCKETS, scrape_registry
from core.registry import Registry
from jobs import gauges
from jobs.heartbeats import live_count
from jobs.queue import Publisher

log = logging.getLogger(__name__)

FLEET_TTL = 5.0


class Cached:
    """``fn()`` at most once per ``ttl`` seconds (scrapes from several Prometheus servers, or a
    scrape and ``GET /v1/queues`` at once, share one query)."""

    def __init__(self, fn: Callable[[], Any], ttl: float) -> None:
        self.fn = fn
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: tuple[float, Any] | None = None

    def __call__(self) -> Any:
        with self._lock:
            if self._value is not None and self._value[0] > time.monotonic():
                return self._value[1]
            value = self.fn()
            self._value = (time.monotonic() + self.ttl, value)
            return value


class FleetCollector(Collector):
    """Jobs by status (all tenants, and active ones by tenant), queues, pending webhooks and
    live GPU workers. A database or broker that does not answer leaves its gauges out of that
    scrape instead of failing it."""

    def __init__(self, db: Database, publisher: Publisher | None, registry: Registry,
                 dead_seconds: float) -> None:
        self.by_status = Cached(lambda: gauges.jobs_by_status(db), FLEET_TTL)
        self.by_tenant = Cached(lambda: gauges.active_jobs_by_tenant(db), FLEET_TTL)
        self.queues = Cached(lambda: gauges.queue_states(db, publisher, registry, dead_seconds, utcnow()),
                             FLEET_TTL)
        self.webhooks = Cached(lambda: gauges.pending_webhooks(db), FLEET_TTL)
        self.workers = Cached(lambda: live_count(db, dead_seconds), FLEET_TTL)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._collect()
        except Exception as exc:  # a scrape must not fail because the database blinked
            log.warning("fleet metrics unavailable: %s: %s", type(exc).__name__, exc)

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("captionq_jobs", "Jobs by status (all tenants)", labels=["status"])
        for status, n in self.by_status().items():
            g.add_metric([status], n)
        yield g
        t = GaugeMetricFamily("captionq_tenant_active_jobs",
                              f"Queued and running jobs by tenant (the {gauges.MAX_TENANT_SERIES} busiest; "
                              "the rest as tenant=\"other\")", labels=["tenant", "status"])
        for (tenant, status), n in sorted(self.by_tenant().items()):
            t.add_metric([tenant, status], n)
        yield t
        queues = self.queues()
        depth = GaugeMetricFamily("captionq_queue_messages",
                                  "Messages waiting in the broker (gpu.<model>, io)", labels=["queue"])
        waiting = GaugeMetricFamily(
            "captionq_queue_waiting", "Work waiting in SQL: queued jobs (gpu.<model>), due webhook "
            "messages (io)", labels=["queue"])
        age = GaugeMetricFamily("captionq_queue_oldest_age_seconds",
                                "Age of the oldest waiting work per queue (0: none)", labels=["queue"])
        for q in queues:
            if q.messages is not None:
                depth.add_metric([q.name], q.messages)
            waiting.add_metric([q.name], q.waiting)
            age.add_metric([q.name], q.oldest_age_seconds)
        yield from (depth, waiting, age)
        yield GaugeMetricFamily("captionq_webhook_messages_pending", "Webhook messages not yet delivered "
                                "or given up", value=self.webhooks())
        yield GaugeMetricFamily("captionq_workers_live", "GPU workers with a recent heartbeat",
                                value=self.workers())


class Metrics:
    def __init__(self, db: Database, publisher: Publisher | None, registry: Registry,
                 dead_seconds: float = 20.0) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("captionq_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("captionq_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=BUCKETS, registry=self.registry)
        self.fleet = FleetCollector(db, publisher, registry, dead_seconds)

    def scrape(self) -> CollectorRegistry:
        """What ``/metrics`` renders: every serve process's HTTP metrics and the fleet gauges."""
        return scrape_registry(self.registry, [self.fleet])


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
            template = route_template(scope)
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
