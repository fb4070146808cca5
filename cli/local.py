"""The embedded local mode: API + one real Celery worker process + the scheduler on one machine.

Same code paths as production, other settings: SQLite, kombu's filesystem broker, a local media
folder. The worker is a separate process (never eager mode, and never a fork of a process that
ran torch); the API runs in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from cli.common import console, settings_or_exit
from core.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def local_settings(*, host: str = "127.0.0.1", port: int = 8000, model: str | None = None,
                   **overrides: Any) -> Settings:
    """Settings for local mode. Auth is off by default only when bound to loopback and
    CAPTIONQ_AUTH is not set; the broker is the filesystem transport unless one is configured."""
    values: dict[str, Any] = {"local_mode": True, "host": host, "port": port, **overrides}
    if model:
        values["model"] = model
    if "CAPTIONQ_AUTH" not in os.environ and "auth" not in overrides:
        values["auth"] = "disabled" if host in LOOPBACK else "required"
    return settings_or_exit(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as CAPTIONQ_* variables, so a child process builds the very same Settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, (list, dict)):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"CAPTIONQ_{name.upper()}"] = text
    return env


class LocalStack:
    """Start and stop the local-mode processes. ``run_forever`` serves in the foreground;
    ``start``/``stop`` run the API in a background thread (used by ``captionq caption``)."""

    def __init__(self, settings: Settings, *, worker_log: Path | None = None) -> None:
        self.settings = settings
        self.worker_log = worker_log
        self._worker: subprocess.Popen[bytes] | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        return f"http://{host}:{self.settings.port}"

    def prepare(self) -> None:
        from core.migrate import upgrade

        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings.media_root.mkdir(parents=True, exist_ok=True)
        upgrade(self.settings)

    def start_worker(self) -> None:
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        out = open(self.worker_log, "ab") if self.worker_log else None  # noqa: SIM115
        self._worker = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--queues", "gpu,io", "--beat"],
            env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )

    def _make_server(self) -> Any:
        import uvicorn

        from api.app import create_app

        config = uvicorn.Config(create_app(self.settings), host=self.settings.host,
                                port=self.settings.port, log_config=None, log_level="warning")
        return uvicorn.Server(config)

    def start(self, timeout: float = 120.0) -> None:
        """Migrate, start the worker and the API in the background, wait until it is ready."""
        self.prepare()
        self.start_worker()
        self._server = self._make_server()
        self._thread = threading.Thread(target=self._server.run, name="captionq-api", daemon=True)
        self._thread.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._worker is not None and self._worker.poll() is not None:
                raise RuntimeError(f"the local worker exited with code {self._worker.returncode}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"local API at {self.base_url} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._stop_worker()

    def _stop_worker(self) -> None:
        proc, self._worker = self._worker, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # warm shutdown: running work finishes or is returned
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def run_forever(self) -> None:
        self.prepare()
        self.start_worker()
        try:
            self._make_server().run()
        finally:
            console.print("stopping the local worker…")
            self._stop_worker()
