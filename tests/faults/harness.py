"""The fault suite's stack and scenarios.

A private PostgreSQL, Redis and S3 forwarder (tests/faults/services.py), the API (uvicorn in this
process), real ``captionq worker`` processes on the tiny checkpoint (two GPU workers, one io
worker with the scheduler) and a webhook receiver. Each scenario submits its jobs, breaks one
thing, and measures: jobs lost (not terminal long after the fault), jobs that ended twice (two
terminal webhook messages, which are written in the same transaction as the transition), and
the seconds from the end of the fault until every job was terminal.

The scenarios themselves are in tests/faults/scenarios.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import sqlalchemy as sa

from core.db import Database
from core.settings import Settings
from jobs.tables import Job, WebhookMessage
from tests.api import helpers
from tests.faults.services import Forwarder, PrivatePostgres, PrivateRedis
from tests.support import services
from tests.worker.stack import TINY_INTERNLM2, Stack, Worker

TERMINAL_EVENTS = ("job.succeeded", "job.failed", "job.canceled")
# Recovery timings used by the suite (the defaults are 10 s sweeps, 30 s re-send, 20 s dead).
RECOVERY = {"sweep_interval_seconds": 2.0, "queued_resend_seconds": 5.0, "heartbeat_seconds": 1.0,
            "worker_dead_seconds": 6.0, "outbox_grace_seconds": 3.0}
DEADLINE_AFTER_FAULT = 60.0
# 63 s of retries in all: longer than the longest receiver outage here (30 s), as the default
# schedule (hours) is longer than any outage a receiver is expected to have.
WEBHOOK_SCHEDULE = "1,2,4,8,16,32"


class Receiver:
    """A webhook receiver on a fixed port that answers 200 and can be taken down."""

    def __init__(self) -> None:
        self.port = helpers.free_port()
        self.received: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                received.append(self.headers.get("webhook-id") or "")
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass
class Figures:
    scenario: str
    jobs: int
    succeeded: int = 0
    failed: int = 0
    failed_codes: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    ended_twice: int = 0
    fault: str = ""
    recovered_seconds: float | None = None  # end of the fault → every job terminal
    webhooks_pending: int | None = None

    def line(self) -> str:
        return json.dumps(asdict(self))


class FaultStack:
    def __init__(self, root: Path, *, workers: bool = True) -> None:
        self.root = root
        self.pg = PrivatePostgres(root)
        self.redis = PrivateRedis(root)
        self.redis.start(aof=False)
        s3 = urlparse(services.S3_ENDPOINT)
        self.s3 = Forwarder((s3.hostname or "127.0.0.1", s3.port or 80))
        self.bucket = services.create_bucket()
        # Workers (and this process's API) reach the bucket only through the forwarder.
        through = dataclasses.replace(self.bucket, endpoint_url=self.s3.url)
        os.environ.update(through.env())
        self.receiver = Receiver()
        settings = Settings(
            database_url=self.pg.url, broker_url=self.redis.url, data_dir=root / "data",
            s3_endpoint_url=self.s3.url, s3_region=self.bucket.region, model=str(TINY_INTERNLM2),
            device="cpu", dtype="float32", allow_private_urls=True, log_level="INFO", max_attempts=5,
            webhook_retry_schedule=WEBHOOK_SCHEDULE, webhook_timeout_seconds=2.0, rate_limits=False,
            **RECOVERY)
        self.settings = helpers.migrated(settings)
        key = helpers.new_tenant(self.settings, "faults")
        server = helpers.start_server(self.settings)
        self.stack = Stack(self.settings, through, server, key.api_key, key.tenant_id, root, None)
        self.gpu: list[Worker] = []
        self.io: Worker | None = None
        if workers:  # the API scenarios (tests/faults/api_scenarios.py) need none
            self.gpu = [self.stack.start_worker(queues="gpu", wait=False) for _ in range(2)]
            self.io = self.stack.start_worker(queues="io", beat=True, wait=False)
            for w in [*self.gpu, self.io]:
                self.stack.wait_ready(w)
        self.image = self.bucket.put("faults/cat.png", helpers.png_bytes())
        # How long the same jobs take without a fault (the baseline scenario): the deadline after
        # a fault is this plus DEADLINE_AFTER_FAULT, i.e. 60 s beyond the work itself.
        self.work_seconds = 0.0

    def close(self) -> None:
        try:
            self.stack.close()
        finally:
            for s in (self.receiver, self.s3, self.redis, self.pg):
                s.stop() if isinstance(s, Receiver) else s.close()

    # --- jobs -----------------------------------------------------------------------------
    def submit(self, n: int, *, media: bool = False, tokens: int = 8) -> list[str]:
        body: dict[str, Any] = {
            "prompts": ["Describe it."], "generation": {"max_new_tokens": tokens},
            "webhook": {"url": self.receiver.url, "events": list(TERMINAL_EVENTS)},
        }
        if media:
            body["media"] = [{"type": "image", "url": self.image}]
        ids = []
        with helpers.client(self.stack.server.base_url, self.stack.api_key) as c:
            for _ in range(n):
                r = c.post("/v1/jobs", json=body)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
        return ids

    def _census(self, ids: list[str]) -> tuple[dict[str, Any], dict[str, int]] | None:
        db = Database(self.settings)
        try:
            with db.session() as s:
                rows = {r.id: r for r in s.execute(
                    sa.select(Job.id, Job.status, Job.error).where(Job.id.in_(ids)))}
                ends = dict(s.execute(
                    sa.select(WebhookMessage.job_id, sa.func.count()).where(
                        WebhookMessage.job_id.in_(ids), WebhookMessage.type.in_(TERMINAL_EVENTS))
                    .group_by(WebhookMessage.job_id)).all())
            return rows, ends
        except Exception:
            return None  # the database is the thing that is down right now
        finally:
            db.dispose()

    def measure(self, scenario: str, ids: list[str], fault: str, fault_end: float,
                extra_wait: float = 0.0) -> Figures:
        """Wait until every job is terminal (or the deadline after the fault passed); count."""
        deadline = fault_end + self.work_seconds + DEADLINE_AFTER_FAULT + extra_wait
        figures = Figures(scenario, len(ids), fault=fault)
        census = None
        while time.monotonic() < deadline:
            census = self._census(ids)
            if census is not None and all(r.status in ("succeeded", "failed", "canceled")
                                          for r in census[0].values()):
                figures.recovered_seconds = round(max(0.0, time.monotonic() - fault_end), 1)
                break
            time.sleep(0.5)
        time.sleep(1.0)  # a second ending would have been written by now
        census = self._census(ids)
        assert census is not None, "the database did not come back"
        rows, ends = census
        for r in rows.values():
            if r.status == "succeeded":
                figures.succeeded += 1
            elif r.status == "failed":
                figures.failed += 1
                code = (r.error or {}).get("code", "?")
                figures.failed_codes[code] = figures.failed_codes.get(code, 0) + 1
            elif r.status != "canceled":
                figures.lost += 1
        figures.ended_twice = sum(1 for n in ends.values() if n > 1)
        return figures

    # --- faults ---------------------------------------------------------------------------
    def kill_gpu_workers(self, kills: int, gap: float) -> None:
        """SIGKILL a random GPU worker ``kills`` times, ``gap`` s apart, starting a replacement."""
        rnd = random.Random(7)
        for _ in range(kills):
            time.sleep(gap)
            victim = rnd.choice([w for w in self.gpu if w.alive()])
            self.stack.stop_worker(victim, signal.SIGKILL)
            self.gpu.remove(victim)
            self.gpu.append(self.stack.start_worker(queues="gpu", wait=False))
        for w in self.gpu:
            self.stack.wait_ready(w)

    def restart_redis(self, *, aof: bool) -> None:
        if aof:  # persistence must be on before the jobs are submitted
            self.redis.kill()
            self.redis.start(aof=True)
            time.sleep(2.0)  # the workers reconnect

    def redis_crash(self, *, aof: bool) -> None:
        self.redis.kill()
        time.sleep(1.0)
        self.redis.start(aof=aof)

    def pg_restart(self, mode: str) -> None:
        self.pg.stop(mode)
        time.sleep(1.0)
        self.pg.start()

    @contextmanager
    def down(self, what: Callable[[], None], back: Callable[[], None], seconds: float) -> Iterator[None]:
        what()
        try:
            time.sleep(seconds)
            yield
        finally:
            back()

    def alive_workers(self) -> list[Worker]:
        return [w for w in [*self.gpu, self.io] if w is not None and w.alive()]
