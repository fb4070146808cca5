"""Worker throughput: the batching worker against the same worker with batching off.

    python bench/bench_worker_batching.py [--jobs 200] [--new-tokens 48] [--concurrency 32]
        [--layout small|8b|tiny] [--device cpu|cuda] [--dtype auto] [--local] [--workdir DIR]
        [--time-limit S] [--deadline S] [--results bench/RESULTS_gpu_worker.md]

The whole service runs for real: PostgreSQL, Redis (broker + live events; a redis-server of its
own, so no other test run touches its queues), the S3 server (media),
the API (uvicorn, in this process) and one ``captionq worker --queues gpu,io`` process on the
device given (CPU by default). ``--local`` runs the embedded local mode instead (SQLite, kombu's
filesystem broker, ``file://`` media: no services, as on the GPU machine). The model is a
random-weight InternVL2 written in the original layout by ``bench/checkpoint_writer.py``, so the
load path converts it like a real checkpoint: ``--layout small`` (default; InternViT hidden 64 x 2
layers + InternLM2 hidden 512 x 8 layers, about 26M parameters, float32, a small byte-level BPE
tokenizer so prompts have realistic lengths), ``8b`` (InternVL2-8B's layout, 8.1B parameters in
bf16, drawn on the GPU, reused from ``--workdir`` when a run left it there) or ``tiny`` (tests).

For each mode — ``CAPTIONQ_BATCHING=true`` (batches of up to ``batch_max_requests`` = 16) and
``CAPTIONQ_BATCHING=false`` (the batcher takes one request at a time) — with the same number of
task threads: start the worker, run 4 warm-up jobs, then submit ``--jobs`` caption jobs as one
batch (``POST /v1/batches``; each job one kit image at ``max_tiles`` 1 = one 448 px tile, a
distinct prompt, greedy, ``--new-tokens`` new tokens) and time it until the batch is
``completed``. ``--time-limit`` stops the batching-off mode early, and ``--deadline`` (the seconds
from start by which the whole run must end) either mode: the rate is then the jobs done over the
time of the last one done, the rest of the batch is canceled, and the output and results row say
it was extrapolated.
Both modes must give identical answers job for job in float32 on the CPU (a request's output does
not depend on its batch neighbours; checked); elsewhere the share of identical answers is
reported, since a batch's kernels round differently from a single request's in bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.worker_bench_lib import LAYOUTS, append_row, count, environment, log, prepare_checkpoint  # noqa: E402
from tests.worker.stack import Stack, build_local_stack, build_stack, destroy_stack, private_redis  # noqa: E402

KIT_IMAGES = ROOT / "tests" / "data" / "conformance" / "images"
_T0 = time.perf_counter()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=32, help="task threads, the same in both modes")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--dtype", default="auto", help="auto (float32 on cpu, bfloat16 on cuda), bfloat16, ...")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="small")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="checkpoint folder, reused when it holds one with the same settings (default: a "
                         "fresh temporary one; for 8b <tmp>/captionq-bench-8b, bench_gpu_engine.py's)")
    ap.add_argument("--local", action="store_true", help="embedded local mode: SQLite, filesystem broker")
    ap.add_argument("--warmup", type=int, default=4, help="warm-up jobs per mode, not timed")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds after which the batching-off mode's timed batch stops (its rate then "
                         "comes from the jobs done, at least one)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds from start by which the run must end: each timed batch gets at most "
                         "what is left, less what the modes after it need, and at least one job")
    ap.add_argument("--ready-timeout", type=float, default=600.0, help="seconds for a worker to load")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--results", type=Path, default=None, help="append a dated row to this Markdown file")
    return ap.parse_args(argv)


def jobs_body(urls: list[str], n: int, new_tokens: int, tag: str) -> dict[str, Any]:
    return {
        "jobs": [{"media": [{"type": "image", "url": urls[i % len(urls)], "max_tiles": 1}],
                  "prompts": [f"Describe picture {i} in one sentence."], "custom_id": f"{tag}-{i}"}
                 for i in range(n)],
        "defaults": {"generation": {"max_new_tokens": new_tokens, "do_sample": False}},
    }


def run_batch(stack: Stack, body: dict[str, Any], timeout: float, limit: float | None = None
              ) -> dict[str, Any]:
    """Submit one batch and wait until it ends, or until ``limit`` s have passed and at least one
    job is done (then the rest is canceled). ``elapsed``: until ``completed``, or for a partial
    run until the last job seen done."""
    import json

    with stack.client() as c:
        t0 = time.perf_counter()
        r = c.post("/v1/batches", json=body)
        assert r.status_code == 202, r.text
        bid = r.json()["id"]
        done, t_done, partial = 0, 0.0, False
        while True:
            b = c.get(f"/v1/batches/{bid}").json()
            now = time.perf_counter() - t0
            if b["counts"]["succeeded"] != done:
                done, t_done = b["counts"]["succeeded"], now
            if b["status"] in ("completed", "canceled"):
                break
            if limit is not None and now >= limit and 0 < done < b["counts"]["total"]:
                partial = True
                c.post(f"/v1/batches/{bid}/cancel")
                break
            if now > timeout:
                raise TimeoutError(f"batch not done after {timeout} s: {b['counts']}")
            # Each look is an API request (a count over the batch's jobs) on the same 2 cores as
            # the worker: 4 a second keeps the end time within 0.25 s and the load negligible.
            time.sleep(0.25)
        elapsed = t_done if partial else time.perf_counter() - t0
        lines = [json.loads(x) for x in c.get(f"/v1/batches/{bid}/results").text.splitlines()]
    ok = [ln for ln in lines if ln["status"] == "succeeded"]
    bad = [ln for ln in lines if ln["status"] == "failed"]
    if bad or (not partial and len(ok) != len(lines)):
        raise RuntimeError(f"{len(lines) - len(ok)} jobs did not succeed, e.g. {(bad or lines)[0]}")
    if partial:  # jobs that ended between the last look and the cancel are past ``elapsed``: the
        ok = ok[:done]  # rate counts only the ``done`` seen by then
    return {"elapsed": elapsed, "lines": ok, "partial": partial}


def run_mode(stack: Stack, urls: list[str], a: argparse.Namespace, batching: bool, last: bool
             ) -> dict[str, Any]:
    t0 = time.perf_counter()
    w = stack.start_worker(queues="gpu,io", concurrency=a.concurrency, batching=batching, wait=False)
    killed = False
    try:
        stack.wait_ready(w, timeout=a.ready_timeout)
        ready_s = time.perf_counter() - t0
        run_batch(stack, jobs_body(urls, a.warmup, a.new_tokens, "warm"), a.timeout)
        limit = None if batching else a.time_limit  # the slower mode's; the deadline binds both
        if a.deadline is not None:  # what the mode after this one needs: about what this one took
            rest = 15.0 if last else 15.0 + 2 * (time.perf_counter() - t0) + 30.0
            left = max(0.0, a.deadline - (time.perf_counter() - _T0) - rest)
            limit = left if limit is None else min(limit, left)
        log(f"batching={'on' if batching else 'off'}: worker ready in {ready_s:.1f} s, warm-up done; "
            f"{a.jobs} jobs{'' if limit is None else f', limit {limit:.0f} s'}")
        r = run_batch(stack, jobs_body(urls, a.jobs, a.new_tokens, "job"), a.timeout, limit)
        if r["partial"]:  # the canceled rest need not finish: running jobs would hold a warm shutdown
            stack.stop_worker(w, signal.SIGKILL)
            killed = True
        lines = r["lines"]
        metrics = [stack.get(ln["job_id"])["metrics"] for ln in lines[: min(len(lines), 50)]]
    except BaseException:
        print(f"--- worker log (batching={batching}), its end ---\n{w.text()[-6000:]}", flush=True)
        raise
    finally:
        if not killed:
            stack.stop_worker(w)
        log(f"batching={'on' if batching else 'off'}: worker stopped{' (killed)' if killed else ''}")
    return {
        "batching": batching, "elapsed": r["elapsed"], "done": len(lines), "partial": r["partial"],
        "jobs_per_s": len(lines) / r["elapsed"], "ready_s": ready_s,
        "texts": {ln["custom_id"]: ln["output"]["text"] for ln in lines},
        "run_p50": statistics.median(m["run_seconds"] for m in metrics),
        "prepare_p50": statistics.median(m.get("prepare_seconds", 0.0) for m in metrics),
        "engine_p50": statistics.median(m.get("engine_seconds", 0.0) for m in metrics),
        "engine": engine_summary(w.text()),
    }


_SERVED = re.compile(r"engine served (\d+) requests in (\d+) batches \(mean [\d.]+, largest (\d+)\), "
                     r"busy ([\d.]+) s")


def engine_summary(worker_log: str) -> str:
    """The batcher's closing line from the worker's log (absent when the worker was killed):
    how full the batches were and how long the engine was busy, warm-up included."""
    m = _SERVED.search(worker_log)
    if m is None:
        return "engine summary not logged (worker killed)"
    requests, batches, largest, busy = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    return (f"engine: {requests} requests in {batches} batches (mean {requests / batches:.1f}, "
            f"largest {largest}), busy {busy:.1f} s = {busy / batches:.2f} s a batch")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    dtype = a.dtype if a.dtype != "auto" else ("float32" if a.device == "cpu" else "bfloat16")
    env = environment(a.device)
    log(f"{env['device_name']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"Python {env['python']}")
    with tempfile.TemporaryDirectory() as tmp, \
            (contextlib.nullcontext(None) if a.local else private_redis(Path(tmp))) as redis_url:
        workdir = a.workdir or (None if a.layout == "8b" else Path(tmp) / "ckpt")
        ckpt, n_params, reused, write_s = prepare_checkpoint(a.layout, workdir, a.device)
        overrides = {"model": str(ckpt), "device": a.device, "dtype": dtype}
        stack = build_local_stack(Path(tmp), **overrides) if a.local else \
            build_stack(Path(tmp), redis_url=redis_url, **overrides)
        try:
            urls = [stack.put_file(p) for p in sorted(KIT_IMAGES.iterdir())]
            log(f"model: random InternVL2 ({LAYOUTS[a.layout].label}), {count(n_params)} params, "
                f"{dtype} on {a.device}; {a.jobs} jobs x (1 tile, {a.new_tokens} new tokens, greedy); "
                f"{a.concurrency} task threads; {'local mode' if a.local else 'PostgreSQL + Redis + S3'}")
            results = []
            for batching in (True, False):
                load0 = os.getloadavg()[0]
                r = run_mode(stack, urls, a, batching, last=not batching)
                results.append(r)
                print(f"batching={'on ' if batching else 'off'}: {r['elapsed']:.1f} s for {r['done']} jobs = "
                      f"{r['jobs_per_s']:.2f} jobs/s; job p50: run {r['run_p50']:.2f} s, prepare "
                      f"{r['prepare_p50']:.3f} s, engine {r['engine_p50']:.2f} s; {r['engine']}; "
                      f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
                      + (f"\n  STOPPED at the time limit after {r['done']} of {a.jobs} jobs: rate from "
                         f"those; all {a.jobs} would take ~{a.jobs / r['jobs_per_s']:.0f} s (extrapolated)"
                         if r["partial"] else ""), flush=True)
        finally:
            destroy_stack(stack)
    on, off = results
    common = sorted(set(on["texts"]) & set(off["texts"]))
    same = sum(on["texts"][k] == off["texts"][k] for k in common)
    extrapolated = on["partial"] or off["partial"]
    exact = a.device == "cpu" and dtype == "float32"
    ratio = on["jobs_per_s"] / off["jobs_per_s"]
    print(f"speed-up: {ratio:.2f}x{' (extrapolated)' if extrapolated else ''}   "
          f"identical answers: {same == len(common)} ({same}/{len(common)} jobs done in both modes)")
    summary = {"layout": a.layout, "dtype": dtype, "stack": "local" if a.local else "services",
               "jobs": a.jobs, "new_tokens": a.new_tokens, "concurrency": a.concurrency, "on": on, "off": off,
               "ratio": ratio, "extrapolated": extrapolated, "identical": same, "compared": len(common),
               "params": n_params, "reused": reused, "write_s": write_s, **env}
    if a.results is not None:
        append_row(a.results, summary)
        log(f"results appended to {a.results}")
    if exact and same != len(common):
        raise SystemExit(f"answers differ between the modes in {len(common) - same} of {len(common)} jobs")
    return summary


if __name__ == "__main__":
    main()
