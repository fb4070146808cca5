"""What the job service adds to a model call: end-to-end latency of a job whose model work is
(almost) nothing, next to a bare Celery task round trip on the same Redis.

    python bench/bench_worker_overhead.py [--n 100]

One request at a time (latency, not throughput), on a redis-server of the benchmark's own, the
kinds below taking turns (a raw round trip, then a job of each client mode, in rotating order) so
that the machine's drifting load hits them alike:

1. **raw Celery**: ``echo.apply_async().get()`` on a threads-pool Celery worker process
   (Redis broker and result backend): the floor any Celery-based service starts from.
2. **captionq job**, text only, ``max_new_tokens`` 1, through the real API (``captionq serve``
   in its own process, as deployed; ``--api thread`` runs it in this process instead),
   PostgreSQL, the outbox, Redis, one ``captionq worker --queues gpu,io`` process (claim,
   tokenise, the batcher, the model, record) and the live-event path back, learnt two ways:
   ``sse`` — ``POST /v1/jobs``, then ``GET /v1/jobs/{id}/events`` until the ``done`` event;
   ``wait`` — one ``POST /v1/jobs`` with ``Prefer: wait=30``, answered with the finished job
   (the counterpart of ``apply_async().get()``). Also the server-side ``finished_at -
   created_at``.
3. **engine alone**: the same request through ``Engine.chat`` in this process — the part of (2)
   that is model work, so (2) - (3) is the service's overhead.

``--model instant`` (the default, what the issue asks for: "a job with an instant model") loads
the tiny InternLM2 checkpoint but answers without running the network (``bench/instant_model.py``,
installed in the worker subprocess only): prompt building, tokenisation, the batcher and the
result bookkeeping stay. ``--model tiny`` runs the tiny checkpoint's real forward pass on CPU.

The job's own ``metrics.engine_seconds`` (batcher submit → result, inside the worker) is reported
too, and the overhead per job as (2) minus it: on a small shared CPU the model call inside the
worker is slower than alone (its torch threads compete with the API and PostgreSQL), which is not
the service's overhead. ``--torch-threads`` sets the worker's and the engine-alone torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from celery import Celery  # noqa: E402

RAW_QUEUE = "bench_echo"


def make_raw_app(redis_url: str) -> Celery:
    app = Celery("bench_raw", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                    task_acks_late=True, worker_prefetch_multiplier=1, worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True)

    @app.task(name="bench.echo", queue=RAW_QUEUE)
    def echo(x: int) -> int:
        return x

    return app


# For the worker subprocess: ``celery -A bench.bench_worker_overhead:raw_app worker``.
raw_app = make_raw_app(os.environ["BENCH_REDIS_URL"]) if os.environ.get("BENCH_REDIS_URL") else None


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def summary(name: str, xs: list[float]) -> str:
    return (f"{name:<34} p50 {1000 * statistics.median(xs):7.1f} ms   p99 {1000 * pct(xs, 99):7.1f} ms   "
            f"mean {1000 * statistics.fmean(xs):7.1f} ms   (n={len(xs)})")


@contextmanager
def raw_celery(url: str) -> Iterator[Any]:
    """A threads-pool Celery worker process for ``bench.echo``; yields ``one(i)``, one
    ``apply_async().get()`` round trip."""
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    log = open(Path(tempfile.gettempdir()) / "bench-raw-celery.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.bench_worker_overhead:raw_app", "worker",
         "-P", "threads", "-c", "4", "-Q", RAW_QUEUE, "--without-mingle", "--without-gossip", "-l", "INFO"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    app = make_raw_app(url)
    echo = app.tasks["bench.echo"]

    def one(i: int) -> None:
        assert echo.apply_async((i,)).get(timeout=10) == i

    try:
        echo.apply_async((0,)).get(timeout=120)  # worker up
        yield one
    finally:
        proc.terminate()
        proc.wait(30)
        app.close()


def sse_until_done(client: Any, job_id: str) -> dict[str, Any]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "done":
                return json.loads(line[6:])  # type: ignore[no-any-return]
    raise RuntimeError("stream ended without done")


def use_instant_model() -> None:
    """The worker subprocesses (which inherit this environment) answer instantly; so does this
    process's engine-alone run."""
    import instant_model

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench" / "bench_site"), str(ROOT)])
    os.environ.update(instant_model.instant_env())
    instant_model.install()


CLIENTS = {
    # how the client learns the job ended: the SSE stream (POST, then GET .../events until
    # ``done``), or one request (POST with ``Prefer: wait``, answered with the finished job —
    # what ``apply_async().get()`` is to the raw Celery task)
    "sse": "captionq job (POST -> SSE done)",
    "wait": "captionq job (POST, Prefer: wait)",
}


def run_job(c: Any, body: dict[str, Any], client: str) -> dict[str, Any]:
    if client == "wait":
        r = c.post("/v1/jobs", json=body, headers={"Prefer": "wait=30"})
        assert r.status_code == 202 and r.headers.get("preference-applied") == "wait=30", r.text
        return r.json()  # type: ignore[no-any-return]
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return sse_until_done(c, r.json()["id"])


Samples = dict[str, tuple[list[float], list[float], list[float]]]


def bench_jobs(n: int, url: str, batch_wait_ms: int | None, torch_threads: int | None,
               api: str = "process", order: str = "interleaved") -> tuple[list[float], Samples]:
    """``n`` raw Celery round trips and ``n`` jobs per client mode. ``interleaved``: taking turns
    (a raw round trip, then a job of each mode, in rotating order), so that drift in the
    machine's load hits all alike; ``blocks``: all raw round trips back to back first, then the
    jobs (each kind in its own tight loop, as earlier stops measured). Returns the raw seconds
    and, per mode, client-side seconds, server-side seconds and engine seconds."""
    from tests.worker.stack import build_stack, destroy_stack

    body = {"prompts": ["Hi"], "generation": {"max_new_tokens": 1}}
    extra: dict[str, Any] = {} if batch_wait_ms is None else {"batch_wait_ms": batch_wait_ms}
    if torch_threads:
        extra["torch_threads"] = torch_threads
    out: Samples = {mode: ([], [], []) for mode in CLIENTS}
    raw: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, raw_celery(url) as raw_one:
        stack = build_stack(Path(tmp), redis_url=url, **extra)
        try:
            stack.start_worker(queues="gpu,io")
            with api_client(stack, api) as c:
                kinds = ["raw", *CLIENTS]
                if order == "blocks":
                    plan = [[kind] for kind in kinds for _ in range(n + 5)]
                else:
                    plan = [kinds[i % 3:] + kinds[:i % 3] for i in range(n + 5)]
                for step, turn in enumerate(plan):
                    i = step % (n + 5)
                    for mode in turn:
                        t0 = time.perf_counter()
                        if mode == "raw":
                            raw_one(i)
                            if i >= 5:
                                raw.append(time.perf_counter() - t0)
                            continue
                        job = run_job(c, body, mode)
                        dt = time.perf_counter() - t0
                        assert job["status"] == "succeeded", job
                        if i < 5:
                            continue  # warm-up
                        client_side, server_side, in_engine = out[mode]
                        client_side.append(dt)
                        server_side.append((datetime.fromisoformat(job["finished_at"])
                                            - datetime.fromisoformat(job["created_at"])).total_seconds())
                        in_engine.append(float(job["metrics"]["engine_seconds"]))
            return raw, out
        finally:
            destroy_stack(stack)


@contextmanager
def api_client(stack: Any, api: str) -> Iterator[Any]:
    """An HTTP client of the API: ``process`` — ``captionq serve`` in its own process, as
    deployed; ``thread`` — the stack's uvicorn thread inside this process (sharing its GIL with
    the client, which adds to every hop)."""
    from tests.api import helpers

    if api == "thread":
        with stack.client() as c:
            yield c
        return
    with stack.api_process() as base, helpers.client(base, stack.api_key) as c:
        yield c


def bench_engine(n: int, torch_threads: int | None) -> list[float]:
    import torch

    from models.engine import Engine, GenerationParams

    if torch_threads:
        torch.set_num_threads(torch_threads)
    engine = Engine.load(ROOT / "tests" / "data" / "conformance" / "models" / "internvl2-internlm2",
                         device="cpu", dtype="float32")
    params = GenerationParams(max_new_tokens=1)
    for _ in range(5):
        engine.chat("Hi", params=params)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        engine.chat("Hi", params=params)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--model", choices=["instant", "tiny"], default="instant",
                    help="instant (default): the network call answers at once, the rest of the engine "
                         "and the service run for real; tiny: the tiny checkpoint's real forward pass")
    ap.add_argument("--api", choices=["process", "thread"], default="process",
                    help="process (default): `captionq serve` in its own process, as deployed; thread: "
                         "uvicorn in a thread of the benchmark process (shares the client's GIL)")
    ap.add_argument("--order", choices=["interleaved", "blocks"], default="interleaved",
                    help="interleaved (default): raw round trips and jobs take turns; blocks: each kind "
                         "in its own tight loop (the raw figure is then measured on a busy-warm machine)")
    ap.add_argument("--batch-wait-ms", type=int, default=None,
                    help="CAPTIONQ_BATCH_WAIT_MS for the worker (default: the setting's default, 20): "
                         "how long the batcher waits for company before running a lone request")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch threads of the worker and of the engine-alone run (default: the worker's "
                         "default, every core on a CPU device)")
    ap.add_argument("--pg-synchronous-commit", choices=["on", "off"], default="on",
                    help="a measurement aid, never a service setting: 'off' (through PGOPTIONS, for this "
                         "benchmark's connections only) shows what the WAL flush of the job's three "
                         "durable commits costs on this disk")
    a = ap.parse_args()
    if a.pg_synchronous_commit == "off":
        os.environ["PGOPTIONS"] = (os.environ.get("PGOPTIONS", "") + " -c synchronous_commit=off").strip()
    if a.model == "instant":
        use_instant_model()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; model {a.model}; "
          f"order {a.order}; API in a {a.api}; PostgreSQL synchronous_commit={a.pg_synchronous_commit}",
          flush=True)
    from tests.worker.stack import private_redis

    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp)) as url:
        raw, samples = bench_jobs(a.n, url, a.batch_wait_ms, a.torch_threads, a.api,
                                  a.order)
    print(summary("raw Celery round trip", raw), flush=True)
    engine = bench_engine(a.n, a.torch_threads)
    model = statistics.median(engine)
    raw_p50 = statistics.median(raw)
    target = 1.5 * raw_p50 + 0.005
    for mode, label in CLIENTS.items():
        client_side, server_side, in_engine = samples[mode]
        print(summary(label, client_side), flush=True)
        print(summary("  server: created -> finished", server_side), flush=True)
        print(summary("  of which in the engine (metrics)", in_engine), flush=True)
        overhead = [c - e for c, e in zip(client_side, in_engine, strict=True)]
        print(summary("  job minus its engine time", overhead), flush=True)
    print(summary("engine alone (Engine.chat)", engine), flush=True)
    for mode, label in CLIENTS.items():
        job_p50 = statistics.median(samples[mode][0])
        print(f"{label}: p50 {1000 * job_p50:.1f} ms = {job_p50 / raw_p50:.2f} x raw; service overhead "
              f"{1000 * (job_p50 - model):.1f} ms; target (1.5 x raw + 5 ms = {1000 * target:.1f} ms) "
              f"{'met' if job_p50 <= target else 'NOT met'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
