"""Real processes for the end-to-end webhook tests: a Celery worker (``captionq worker``) in a
subprocess and the API (uvicorn) in a thread, both on the test PostgreSQL and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from core.settings import Settings
from tests.api import helpers

ROOT = Path(__file__).resolve().parents[2]


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a worker subprocess needs to match ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONQ_")}
    env.update({
        "CAPTIONQ_DATABASE_URL": settings.database_url,
        "CAPTIONQ_BROKER_URL": settings.effective_broker_url,
        "CAPTIONQ_ALLOW_PRIVATE_URLS": str(settings.allow_private_urls).lower(),
        "CAPTIONQ_WEBHOOK_RETRY_SCHEDULE": settings.webhook_retry_schedule,
        "CAPTIONQ_WEBHOOK_TIMEOUT_SECONDS": str(settings.webhook_timeout_seconds),
        "CAPTIONQ_SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
        "CAPTIONQ_OUTBOX_GRACE_SECONDS": str(settings.outbox_grace_seconds),
        "CAPTIONQ_DATA_DIR": str(settings.data_dir),
        "CAPTIONQ_LOG_LEVEL": "INFO",
    })
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_worker(settings: Settings, log_path: Path, *, queues: str = "io", beat: bool = True,
                 concurrency: int | None = 8, timeout: float = 60, **env: str) -> WorkerProcess:
    """``python -m cli.main worker --queues …`` until it logs that it is ready (``concurrency``
    None: the worker's default)."""
    args = [sys.executable, "-m", "cli.main", "worker", "--queues", queues]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    if beat:
        args.append("--beat")
    out: IO[str] = open(log_path, "w")  # noqa: SIM115 (the process owns it)
    proc = subprocess.Popen(args, cwd=ROOT, env=worker_env(settings, **env), stdout=out,
                            stderr=subprocess.STDOUT, text=True)
    w = WorkerProcess(proc, log_path)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{w.log()[-3000:]}")
        if " ready." in w.log():
            return w
        time.sleep(0.1)
    w.stop()
    raise RuntimeError(f"worker not ready after {timeout} s:\n{w.log()[-3000:]}")


@dataclass
class ApiServer:
    base_url: str
    server: Any
    thread: threading.Thread

    def client(self, api_key: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {api_key}"}
        return httpx.Client(base_url=self.base_url, headers=auth, timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_api(settings: Settings) -> ApiServer:
    """The real app from ``api.app.create_app`` on a free loopback port."""
    live = helpers.start_server(settings)
    return ApiServer(live.base_url, live.server, live.thread)
