"""The embedded local mode: API + one real Celery worker process + the scheduler on one machine.

Same code paths as production, other settings: SQLite, kombu's filesystem broker, a local media
folder. The worker is a separate process (never eager mode, and never a fork of a process that
ran torch); the API runs in this process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from cli.common import console, settings_or_exit
from core.registry import DEFAULT_NAME
from core.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ERROR_PREFIX = "error: "  # how a worker's one-line reason for exiting starts (worker.app)


def local_settings(*, host: str = "127.0.0.1", port: int = 8000, model: str | None = None,
                   **overrides: Any) -> Settings:
    """Settings for local mode. Auth is off by default only when bound to loopback and
    CAPTIONQ_AUTH is not set; the broker is the filesystem transport unless one is configured.

    Local mode runs one worker, so it serves one model and accepts only that one: with a model
    registry (``CAPTIONQ_MODELS``), the entry ``model`` names (else the default); a ``model``
    that is a checkpoint rather than a registry name replaces the registry."""
    values: dict[str, Any] = {"local_mode": True, "host": host, "port": port, **overrides}
    if model:
        values["model"] = model
    if "CAPTIONQ_AUTH" not in os.environ and "auth" not in overrides:
        values["auth"] = "disabled" if host in LOOPBACK else "required"
    settings = settings_or_exit(**values)
    if settings.models:
        spec = settings.registry.resolve(model) if model else settings.model_spec()
        # A copy, not a new Settings: the settings sources would merge the environment's
        # registry back into the one given here.
        if spec is None:  # a checkpoint: the one model, as without a registry
            name = settings.model_name or DEFAULT_NAME
            update: dict[str, Any] = {"models": {}, "default_model": name, "worker_model": name}
        else:
            update = {"models": {spec.name: {"checkpoint": spec.checkpoint, **spec.limits()}},
                      "default_model": spec.name, "worker_model": spec.name}
        settings = settings.model_copy(update=update)
    return settings


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound now (checked before anything starts, so ``up`` ends
    with one line instead of uvicorn's traceback after the worker was already started)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


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
        self._error_line: str | None = None
        self._relay_thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        return f"http://{host}:{self.settings.port}"

    def prepare(self) -> None:
        from core.migrate import upgrade

        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings.media_root.mkdir(parents=True, exist_ok=True)
        upgrade(self.settings)

    def local_tenant(self) -> tuple[str, str]:
        """The built-in tenant every request belongs to while auth is disabled, and its webhook
        signing secret (created here if new, so it can be printed before the API starts)."""
        from core.db import Database
        from jobs.tenants import ensure_local_tenant, signing_secrets

        db = Database(self.settings)
        try:
            with db.session() as session:
                tenant = ensure_local_tenant(session)
                session.commit()
            with db.session() as session:
                return tenant, signing_secrets(session, tenant)[0]
        finally:
            db.dispose()

    def start_worker(self) -> None:
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        if self.worker_log:
            out: Any = open(self.worker_log, "ab")  # noqa: SIM115
        else:
            out = subprocess.PIPE  # relayed to our stderr, its error line kept (_relay)
        self._worker = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--queues", "gpu,io", "--beat"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if out is subprocess.PIPE:
            self._relay_thread = threading.Thread(target=self._relay, args=(self._worker,),
                                                  name="captionq-worker-log", daemon=True)
            self._relay_thread.start()

    def _relay(self, proc: subprocess.Popen[bytes]) -> None:
        """Pass the worker's output on to our stderr, except its one-line ``error:`` (the reason
        it could not start), which :meth:`failure` reports once, after the API stopped."""
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith(ERROR_PREFIX):
                self._error_line = line
            else:
                print(line, file=sys.stderr, flush=True)

    def failure(self) -> str | None:
        """None while the worker runs; once it has exited, the line that says why: the worker's
        own ``error:`` line, else its exit code."""
        proc = self._worker
        if proc is None or proc.poll() is None:
            return None
        if self._error_line is None and self.worker_log is not None and self.worker_log.exists():
            lines = self.worker_log.read_text(errors="replace").splitlines()
            self._error_line = next((ln for ln in reversed(lines) if ln.startswith(ERROR_PREFIX)), None)
        if self._error_line is None and self._relay_thread is not None:
            self._relay_thread.join(timeout=2.0)  # it may still be reading the last lines
        return self._error_line or f"{ERROR_PREFIX}the local worker exited with code {proc.returncode}"

    @property
    def worker_exit_code(self) -> int | None:
        return None if self._worker is None else self._worker.poll()

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
        """Until the API answers; :class:`WorkerFailed` as soon as the worker has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_worker()
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"local API at {self.base_url} not ready after {timeout:.0f} s")

    def check_worker(self) -> None:
        line = self.failure()
        if line is not None:
            raise WorkerFailed(line, self.worker_exit_code or 1)

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

    def run_forever(self) -> int:
        """Serve in the foreground until Ctrl-C, or until the worker exits: then the API stops
        too and the worker's line is printed. Returns the exit code for ``captionq up``."""
        self.start_worker()
        server = self._make_server()
        stopping = threading.Event()

        def watch() -> None:  # a worker gone means no job would ever run: stop serving
            assert self._worker is not None
            self._worker.wait()
            if not stopping.is_set():
                server.should_exit = True

        threading.Thread(target=watch, name="captionq-worker-watch", daemon=True).start()
        died = False
        try:
            server.run()
        finally:
            stopping.set()
            died = self._worker is not None and self._worker.poll() is not None
            if not died:
                console.print("stopping the local worker…")
                self._stop_worker()
        if died:
            console.print(self.failure(), markup=False, highlight=False)
            return 2 if self.worker_exit_code == 2 else 1  # 2: a setting to fix, like the worker's
        return 0


class WorkerFailed(Exception):
    """The local worker exited; ``line`` says why (its own one-line error when it printed one)."""

    def __init__(self, line: str, exit_code: int) -> None:
        super().__init__(line)
        self.line = line
        self.exit_code = exit_code
