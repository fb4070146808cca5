"""Worker throughput: the batching worker against the same worker with batching off.

    python bench/bench_worker_batching.py [--jobs 200] [--new-tokens 48] [--concurrency 32]

The whole service runs for real: PostgreSQL, Redis (broker + live events; a redis-server of its
own, so no other test session touches its queues), the S3 server (media),
the API (uvicorn, in this process) and one ``captionq worker --queues gpu,io`` process on the
device given (CPU by default). The model is a small random-weight InternVL2 written in the
original layout by ``bench/bench_engine_batch.py`` (InternViT hidden 64 x 2 layers + InternLM2
hidden 512 x 8 layers, about 26M parameters, a small byte-level BPE tokenizer so prompts have
realistic lengths), so the load path converts it like a real checkpoint.

For each mode — ``CAPTIONQ_BATCHING=true`` (batches of up to ``batch_max_requests`` = 16) and
``CAPTIONQ_BATCHING=false`` (the batcher takes one request at a time) — with the same number of
task threads: start the worker, run 4 warm-up jobs, then submit ``--jobs`` caption jobs as one
batch (``POST /v1/batches``; each job one kit image at ``max_tiles`` 1 = one 448 px tile, a
distinct prompt, greedy, ``--new-tokens`` new tokens) and time it until the batch is
``completed``. Both modes must give identical answers job for job (a request's output does not
depend on its batch neighbours); the script checks it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_engine_batch import write_checkpoint  # noqa: E402
from tests.worker.stack import Stack, build_stack, destroy_stack, private_redis  # noqa: E402

KIT_IMAGES = ROOT / "tests" / "data" / "conformance" / "images"


def model_args() -> SimpleNamespace:
    return SimpleNamespace(hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1536, image_size=448,
                           vit_hidden=64, vit_layers=2, vit_heads=4, toy_tokenizer=False)


def jobs_body(urls: list[str], n: int, new_tokens: int, tag: str) -> dict[str, Any]:
    return {
        "jobs": [{"media": [{"type": "image", "url": urls[i % len(urls)], "max_tiles": 1}],
                  "prompts": [f"Describe picture {i} in one sentence."], "custom_id": f"{tag}-{i}"}
                 for i in range(n)],
        "defaults": {"generation": {"max_new_tokens": new_tokens, "do_sample": False}},
    }


def run_batch(stack: Stack, body: dict[str, Any], timeout: float) -> tuple[float, list[dict[str, Any]]]:
    import json

    with stack.client() as c:
        t0 = time.perf_counter()
        r = c.post("/v1/batches", json=body)
        assert r.status_code == 202, r.text
        bid = r.json()["id"]
        while True:
            b = c.get(f"/v1/batches/{bid}").json()
            if b["status"] in ("completed", "canceled"):
                break
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"batch not done after {timeout} s: {b['counts']}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        lines = [json.loads(x) for x in c.get(f"/v1/batches/{bid}/results").text.splitlines()]
    bad = [ln for ln in lines if ln["status"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not succeed, e.g. {bad[0]}")
    return elapsed, lines


def job_metrics(stack: Stack, ids: list[str]) -> list[dict[str, Any]]:
    return [stack.get(i)["metrics"] for i in ids]


def run_mode(stack: Stack, urls: list[str], a: argparse.Namespace, batching: bool) -> dict[str, Any]:
    w = stack.start_worker(queues="gpu,io", concurrency=a.concurrency, batching=batching)
    try:
        run_batch(stack, jobs_body(urls, 4, a.new_tokens, "warm"), a.timeout)
        elapsed, lines = run_batch(stack, jobs_body(urls, a.jobs, a.new_tokens, "job"), a.timeout)
        metrics = job_metrics(stack, [ln["job_id"] for ln in lines[: min(len(lines), 50)]])
        batches = [ln for ln in w.text().splitlines() if "succeeded in" in ln and "caption_job" in ln]
    finally:
        stack.stop_worker(w)
    return {
        "batching": batching, "elapsed": elapsed, "jobs_per_s": a.jobs / elapsed,
        "texts": {ln["custom_id"]: ln["output"]["text"] for ln in lines},
        "run_p50": statistics.median(m["run_seconds"] for m in metrics),
        "tasks_logged": len(batches),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=32, help="task threads, the same in both modes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=3600.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp)) as redis_url:
        ckpt = Path(tmp) / "ckpt"
        ckpt.mkdir()
        n_params = write_checkpoint(ckpt, model_args())  # type: ignore[arg-type]
        stack = build_stack(Path(tmp), redis_url=redis_url, model=str(ckpt), device=a.device)
        try:
            urls = [stack.put_file(p) for p in sorted(KIT_IMAGES.iterdir())]
            print(f"model: random InternVL2 (InternViT 64x2 + InternLM2 512x8), {n_params / 1e6:.1f}M "
                  f"params, "
                  f"float32 on {a.device}; {a.jobs} jobs x (1 tile, {a.new_tokens} new tokens, greedy); "
                  f"{a.concurrency} task threads", flush=True)
            results = []
            for batching in (True, False):
                load0 = os.getloadavg()[0]
                r = run_mode(stack, urls, a, batching)
                results.append(r)
                print(f"batching={'on ' if batching else 'off'}: {r['elapsed']:.1f} s for {a.jobs} jobs = "
                      f"{r['jobs_per_s']:.2f} jobs/s; job run_seconds p50 {r['run_p50']:.2f} s; "
                      f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                      flush=True)
        finally:
            destroy_stack(stack)
    on, off = results
    same = on["texts"] == off["texts"]
    print(f"speed-up: {on['jobs_per_s'] / off['jobs_per_s']:.2f}x   identical answers: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
