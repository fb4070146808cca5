"""The engine's reserved KV cache against transformers' DynamicCache, same model and batch.

    python bench/bench_kv_cache.py [--requests 16] [--new-tokens 128] [--repeat 6]

The model is the worker benchmark's ``small`` layout (bench/worker_bench_lib.py: InternLM2 hidden
512 x 8 layers, 8/2 heads; one 448 px tile per request, ~290-token prompts). One batch of
``--requests`` runs through ``Engine.generate_batch`` with each cache in turn, ``--repeat`` times,
alternating so that a noisy neighbour hits both alike; the token ids must be identical. The
DynamicCache side swaps :func:`models.kv_cache.reserved_cache` for a plain ``DynamicCache``
for its runs (this script only; the service always reserves).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_engine_batch import make_requests, on_own_thread  # noqa: E402
from bench.worker_bench_lib import prepare_checkpoint  # noqa: E402
from models import kv_cache  # noqa: E402
from models.engine import Engine  # noqa: E402


def _dynamic(text_config: Any, capacity: int) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=text_config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=6)
    a = ap.parse_args()
    reserved = kv_cache.reserved_cache

    def run() -> dict[str, list[float]]:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = prepare_checkpoint("small", Path(tmp) / "ckpt", "cpu")[0]
            engine = Engine.load(ckpt, device="cpu", dtype="float32")
        reqs = make_requests(a.requests, a.new_tokens)
        engine.generate_batch(reqs[:2])  # warm-up
        times: dict[str, list[float]] = {"dynamic": [], "reserved": []}
        ids: dict[str, list[list[int]]] = {}
        for _ in range(a.repeat):
            for name, factory in (("dynamic", _dynamic), ("reserved", reserved)):
                kv_cache.reserved_cache = factory  # type: ignore[assignment]
                try:
                    t0 = time.perf_counter()
                    out = engine.generate_batch(reqs)
                    times[name].append(time.perf_counter() - t0)
                finally:
                    kv_cache.reserved_cache = reserved
                ids[name] = [r.output_ids for r in out]
        if ids["dynamic"] != ids["reserved"]:
            sys.exit("the two caches gave different token ids")
        return times

    times = on_own_thread(run)  # torch off the main thread: see on_own_thread
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:8}: {' '.join(f'{x:.2f}' for x in v)} s; median {med[k]:.2f} s, best {min(v):.2f} s")
    ratio = med["dynamic"] / med["reserved"]
    best = min(times["dynamic"]) / min(times["reserved"])
    print(f"{a.requests} requests x {a.new_tokens} new tokens; reserved is {ratio:.2f}x (median), "
          f"{best:.2f}x (best); identical ids: True; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
