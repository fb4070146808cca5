"""A worker's small HTTP endpoint: ``/metrics`` (``--metrics-port``) and ``/healthz``
(``--health-port``; both on one server when the ports are equal).

``/healthz`` answers 200 ``{"status": "ok", ...}`` once the worker consumes its queues (for a
gpu worker: its model is loaded, which happens before the consumer starts), and 503 while it is
starting (``starting``: loading the model, connecting to the broker) or after it began its warm
shutdown (``stopping``). A worker whose engine process dies exits at once, so a dead engine is
never reported healthy. What compose's health check and ``captionq healthcheck`` ask.

The server is the standard library's, on daemon threads: the worker never imports FastAPI.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


@dataclass
class HealthState:
    """What ``/healthz`` reports; the worker's Celery signals move it."""

    queues: list[str]
    details: Callable[[], dict[str, Any]] = field(default=lambda: {})
    phase: str = "starting"  # starting -> ok -> stopping

    def report(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"status": self.phase, "queues": self.queues}
        try:
            body.update(self.details())
        except Exception as exc:  # details are extras; the phase decides
            body["details_error"] = type(exc).__name__
        return (200 if self.phase == "ok" else 503), body


class ProbeServer:
    def __init__(self, port: int, host: str, *, registry: CollectorRegistry | None,
                 health: HealthState | None) -> None:
        self.registry = registry
        self.health = health
        probe = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and probe.registry is not None:
                    self._send(200, generate_latest(probe.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz" and probe.health is not None:
                    status, body = probe.health.report()
                    self._send(status, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b'{"status": "not found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="captionq-probe", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start(*, metrics_port: int | None, health_port: int | None, host: str, registry: CollectorRegistry,
          health: HealthState) -> list[ProbeServer]:
    """One server per distinct port (``/metrics`` on the metrics port, ``/healthz`` on the health
    port, both when they are the same)."""
    servers: list[ProbeServer] = []
    if metrics_port is not None and metrics_port == health_port:
        servers.append(ProbeServer(metrics_port, host, registry=registry, health=health))
    else:
        if metrics_port is not None:
            servers.append(ProbeServer(metrics_port, host, registry=registry, health=None))
        if health_port is not None:
            servers.append(ProbeServer(health_port, host, registry=None, health=health))
    for s in servers:
        log.info("worker endpoint on %s:%d: %s", host, s.port,
                 " ".join(p for p, on in (("/metrics", s.registry), ("/healthz", s.health)) if on))
    return servers
