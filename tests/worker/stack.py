"""A real captionq stack for the worker tests: PostgreSQL (migrated), Redis as the broker, the S3
server for media, the API (uvicorn in a thread of the test process) and real worker processes
(``python -m cli.main worker``, i.e. ``captionq worker``) on the tiny InternLM2 checkpoint.

Each test module gets its own database and Redis database (from the same helpers as the
``pg_database`` / ``redis_url`` fixtures): worker processes consume every message of the ``gpu``
queue and the sweeper recovers any stuck job, so sharing them with other modules' leftovers would
make these tests run other modules' jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cli.local import settings_env
from core.settings import Settings
from tests.api import helpers
from tests.support import services

ROOT = Path(__file__).resolve().parents[2]
TINY_INTERNLM2 = ROOT / "tests" / "data" / "conformance" / "models" / "internvl2-internlm2"
TERMINAL = ("succeeded", "failed", "canceled")


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Stack:
    settings: Settings
    bucket: services.S3Bucket | None
    server: helpers.LiveServer
    api_key: str
    tenant_id: str
    tmp: Path
    pg: services.PostgresDB | None
    workers: list[Worker] = field(default_factory=list)

    # --- processes -----------------------------------------------------------------------
    def worker_env(self, **overrides: Any) -> dict[str, str]:
        s = self.settings.model_copy(update=overrides)
        bucket_env = self.bucket.env() if self.bucket is not None else {}
        return {**os.environ, **settings_env(s), **bucket_env, "PYTHONUNBUFFERED": "1"}

    def start_worker(self, *, queues: str = "gpu,io", beat: bool = False, wait: bool = True,
                     concurrency: int | None = None, env: dict[str, str] | None = None,
                     **overrides: Any) -> Worker:
        n = len(self.workers)
        log = self.tmp / f"worker-{n}.log"
        args = [sys.executable, "-m", "cli.main", "worker", "--queues", queues]
        if beat:
            args.append("--beat")
        if concurrency:
            args += ["--concurrency", str(concurrency)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, cwd=ROOT, env={**self.worker_env(**overrides), **(env or {})},
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        w = Worker(proc, log)
        self.workers.append(w)
        if wait:
            self.wait_ready(w)
        return w

    def wait_ready(self, w: Worker, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in w.text():
                return
            if not w.alive():
                raise RuntimeError(f"worker exited with {w.proc.returncode}:\n{w.text()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout} s:\n{w.text()[-4000:]}")

    def stop_worker(self, w: Worker, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if w.alive():
            if sig == signal.SIGKILL:
                os.killpg(w.proc.pid, signal.SIGKILL)
            else:
                w.proc.send_signal(sig)
        try:
            return w.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(w.proc.pid, signal.SIGKILL)
            return w.proc.wait(10)

    def close(self) -> None:
        for w in self.workers:
            self.stop_worker(w)
        self.server.stop()

    def logs(self, tail: int = 3000) -> str:
        """The end of every worker's log, for assertion messages."""
        return "\n".join(f"--- {w.log.name} ---\n{w.text()[-tail:]}" for w in self.workers)

    # --- API ----------------------------------------------------------------------------
    @contextmanager
    def client(self) -> Iterator[httpx.Client]:
        with helpers.client(self.server.base_url, self.api_key) as c:
            yield c

    @contextmanager
    def api_process(self, timeout: float = 60.0) -> Iterator[str]:
        """``captionq serve`` as its own process (as in production) on a free port, with the
        stack's settings; yields its base URL. The in-thread server of :attr:`server` shares this
        process's GIL with the test's HTTP client, which a latency benchmark must not measure."""
        port = helpers.free_port()
        log = self.tmp / f"api-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT, env=self.worker_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"captionq serve did not come up:\n{text}")
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.client() as c:
            r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        return r.json()  # type: ignore[no-any-return]

    def get(self, job_id: str, wait: float = 0) -> dict[str, Any]:
        with self.client() as c:
            r = c.get(f"/v1/jobs/{job_id}", params={"wait": wait} if wait else None)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def wait_batch(self, batch_id: str, timeout: float = 120.0, every: float = 0.2,
                   on_poll: Any = None) -> dict[str, Any]:
        """Poll ``GET /v1/batches/{id}`` until the batch is completed, canceled or expired (or the
        time is up); ``on_poll()`` runs before each poll."""
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                if on_poll is not None:
                    on_poll()
                batch: dict[str, Any] = c.get(f"/v1/batches/{batch_id}").json()
                if batch["status"] in ("completed", "canceled", "expired") or time.monotonic() >= deadline:
                    return batch
                time.sleep(every)

    def wait(self, job_id: str, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id, wait=min(20.0, max(0.0, deadline - time.monotonic())))
            if job["status"] in TERMINAL or time.monotonic() >= deadline:
                return job

    def wait_for(self, job_id: str, pred: Any, timeout: float = 60.0, every: float = 0.05) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if pred(job) or job["status"] in TERMINAL or time.monotonic() > deadline:
                return job
            time.sleep(every)

    def put(self, key: str, data: bytes) -> str:
        if self.bucket is None:  # local mode: a file under the media root
            path = self.settings.media_root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return path.resolve().as_uri()
        return self.bucket.put(key, data)

    def put_file(self, path: Path) -> str:
        return self.put(path.name, path.read_bytes())


def build_stack(tmp: Path, *, redis_url: str | None = None, **settings_overrides: Any) -> Stack:
    """A migrated database, a fresh Redis database (or ``redis_url``), the S3 bucket, a tenant
    and the API server. Workers are started by the tests (``stack.start_worker()``)."""
    pg = services.create_database()
    redis_url = redis_url or services.redis_url()
    bucket = services.create_bucket()
    os.environ.update(bucket.env())  # the API (this process) reads S3 manifests with boto3
    values: dict[str, Any] = {
        "database_url": pg.url, "broker_url": redis_url, "data_dir": tmp / "data",
        "s3_endpoint_url": bucket.endpoint_url, "s3_region": bucket.region,
        "model": str(TINY_INTERNLM2), "device": "cpu", "dtype": "float32", "allow_private_urls": True,
        "outbox_grace_seconds": 2.0, "log_level": "INFO",
    }
    values.update(settings_overrides)
    settings = helpers.migrated(Settings(**values))
    key = helpers.new_tenant(settings, f"worker-tests-{os.getpid()}-{time.monotonic_ns()}")
    server = helpers.start_server(settings)
    return Stack(settings, bucket, server, key.api_key, key.tenant_id, tmp, pg)


def build_local_stack(tmp: Path, **settings_overrides: Any) -> Stack:
    """The embedded local mode's services: SQLite, kombu's filesystem broker, no Redis (live events
    come from the database), ``file://`` media under the media root."""
    values: dict[str, Any] = {
        "local_mode": True, "database_url": f"sqlite:///{tmp / 'captionq.db'}", "broker_url": None,
        "data_dir": tmp / "data", "media_root": tmp / "media", "model": str(TINY_INTERNLM2),
        "device": "cpu", "dtype": "float32", "log_level": "INFO",
    }
    values.update(settings_overrides)
    settings = helpers.migrated(Settings(**values))
    assert settings.events_redis_url is None and settings.uses_local_broker
    key = helpers.new_tenant(settings, f"worker-local-{os.getpid()}")
    server = helpers.start_server(settings)
    return Stack(settings, None, server, key.api_key, key.tenant_id, tmp, None)


@contextmanager
def private_redis(tmp: Path) -> Iterator[str]:
    """A redis-server of our own on a free port (benchmarks: no other test session can flush or
    drain its queues meanwhile, as can happen on the shared server's numbered databases)."""
    import shutil

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found")
    port = helpers.free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def destroy_stack(stack: Stack) -> None:
    try:
        stack.close()
    finally:
        if stack.pg is not None:
            services.drop_database(stack.pg)
