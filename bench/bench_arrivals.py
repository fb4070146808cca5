"""Open-loop Poisson arrivals at 50 % and 80 % of measured capacity: continuous against static
batching, same engine, same arrival schedule (CPU by default).

    python bench/bench_arrivals.py [--layout small|tiny|8b] [--device cpu] [--requests 40]
        [--slots 8] [--loads 0.5,0.8] [--min-new 8] [--max-new 64] [--media text|tile]
        [--seed 1] [--workdir DIR]

What it does, on the random-weight checkpoint of ``bench/worker_bench_lib.py``'s layout:

1. capacity: ``--requests`` requests queued at once for the static batcher
   (:class:`models.batcher.Batcher`, ``--slots`` rows a batch) and timed until the last one
   ends; capacity = requests / seconds (the static batcher at saturation, full batches);
2. for each load level (``--loads``, fractions of that capacity) a Poisson arrival schedule
   (exponential gaps, fixed ``--seed``) of ``--requests`` requests, each with its own
   ``max_new_tokens`` drawn uniformly from ``--min-new..--max-new`` (a random model never emits
   the stop token, so each generates exactly that many: short answers stuck behind long ones in
   a static batch is what continuous batching removes);
3. the same schedule, request for request, through the static batcher and through
   :class:`models.continuous.ContinuousBatcher` (same constructor and ``submit``); a driver
   thread submits each request at its arrival time. Latency = end - scheduled arrival (open
   loop: a late submit counts against the mode); throughput = requests / (last end - first
   arrival).

It prints p50/p99 latency, throughput and batch occupancy (rows per decoding step over the
slots, from the batcher's ``stats``) per mode and load, and the ratios side by side:
continuous p99 / static p99 (target at 80 %: <= 0.5x) and continuous / static throughput
(target: >= 1x). Without ``models.continuous`` it runs the static batcher only and says
"continuous: not available". All of the model's torch work runs on one thread at a time (each
batcher's engine thread; the first one loads the model, see ``models.batcher``). Requests are
text-only by default (``--media tile``: one 448 px tile each), which keeps a run on 2 CPU cores
under about 3 minutes at the default settings. Run it on an otherwise idle machine: capacity is
measured once, so other load during that run lowers it and every load level with it.
``tests/models/test_bench_arrivals.py`` runs it at toy size.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_engine_batch import make_requests, on_own_thread  # noqa: E402
from bench.checkpoint_writer import SUBJECTS  # noqa: E402
from bench.worker_bench_lib import LAYOUTS, environment, log, prepare_checkpoint  # noqa: E402
from models.batcher import Batcher  # noqa: E402
from models.engine import ChatRequest, ChatResult, Engine  # noqa: E402
from models.generation import GenerationParams  # noqa: E402


class AnyBatcher(Protocol):
    stats: Any

    def submit(self, request: ChatRequest) -> Future[ChatResult]: ...

    def close(self) -> None: ...


BatcherFactory = Callable[..., AnyBatcher]


def continuous_factory() -> BatcherFactory | None:
    try:
        from models.continuous import ContinuousBatcher  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return ContinuousBatcher  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the run's start
    request: ChatRequest


def build_requests(n: int, media: str, min_new: int, max_new: int, seed: int,
                   image_size: int) -> list[ChatRequest]:
    """``n`` requests with distinct questions and ``max_new_tokens`` drawn from
    ``min_new..max_new`` (the same draw for a given seed)."""
    rng = random.Random(seed)
    news = [rng.randint(min_new, max_new) for _ in range(n)]
    if media == "tile":
        base = make_requests(n, max_new, image_size)
        return [ChatRequest(r.question, pixel_values=r.pixel_values,
                            params=GenerationParams(max_new_tokens=k))
                for r, k in zip(base, news, strict=True)]
    return [ChatRequest(f"Describe {SUBJECTS[i % len(SUBJECTS)]} number {i} in a few words.",
                        params=GenerationParams(max_new_tokens=k)) for i, k in enumerate(news)]


def poisson_schedule(requests: list[ChatRequest], rate: float, seed: int) -> list[Arrival]:
    """Arrival times of a Poisson process of ``rate`` requests/s (the first at 0)."""
    rng = random.Random(seed)
    at, out = 0.0, []
    for i, req in enumerate(requests):
        if i:
            at += rng.expovariate(rate)
        out.append(Arrival(at, req))
    return out


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def drive(batcher: AnyBatcher, schedule: list[Arrival]) -> dict[str, float]:
    """Submit each request at its arrival time from a driver thread; wait for them all."""
    ends: list[float] = [0.0] * len(schedule)
    futures: list[Future[ChatResult]] = []
    t0 = time.perf_counter() + 0.05

    def on_done(i: int) -> Callable[[Future[ChatResult]], None]:
        def record(_f: Future[ChatResult]) -> None:
            ends[i] = time.perf_counter() - t0
        return record

    def driver() -> None:
        for i, arrival in enumerate(schedule):
            delay = t0 + arrival.at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            fut = batcher.submit(arrival.request)
            fut.add_done_callback(on_done(i))
            futures.append(fut)

    thread = threading.Thread(target=driver, name="arrivals-driver")
    thread.start()
    thread.join()
    results = [f.result() for f in futures]  # raises a failed request's error
    latencies = [end - a.at for end, a in zip(ends, schedule, strict=True)]
    span = max(ends) - schedule[0].at
    st = batcher.stats  # rows per decoding step over the slots: how full the batches ran
    occupancy = st.rows_stepped / st.decode_steps / st.slots if st.decode_steps and st.slots else 0.0
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "throughput": len(schedule) / span, "tokens_per_s": sum(r.output_tokens for r in results) / span,
            "occupancy": occupancy}


def measure_capacity(engine: Engine, requests: list[ChatRequest], kw: dict[str, Any]) -> float:
    """Requests/s of the static batcher at saturation: every request is queued before its engine
    thread starts (a running batcher would start the first one alone on its idle engine), timed
    from the first submit to the last end."""
    batcher = Batcher(engine, start=False, **kw)
    try:
        t0 = time.perf_counter()
        futures = [batcher.submit(r) for r in requests]
        batcher.start()
        for f in futures:
            f.result()
        return len(requests) / (time.perf_counter() - t0)
    finally:
        batcher.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--requests", type=int, default=40, help="per load level (and for the capacity run)")
    ap.add_argument("--slots", type=int, default=8, help="max_requests of either batcher")
    ap.add_argument("--kv-budget", type=int, default=32768, help="max_tokens of either batcher")
    ap.add_argument("--wait-ms", type=float, default=20.0)
    ap.add_argument("--loads", default="0.5,0.8", help="fractions of the measured capacity")
    ap.add_argument("--min-new", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--media", choices=("text", "tile"), default="text")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the checkpoint is written / reused")
    ap.add_argument("--static-only", action="store_true", help="skip continuous batching")
    a = ap.parse_args(argv)
    dtype = a.dtype if a.dtype != "auto" else ("float32" if a.device == "cpu" else "bfloat16")
    env = environment(a.device)
    log(f"{env['device_name']}; torch {env['torch']}, transformers {env['transformers']}")
    ckpt, n_params, _, _ = prepare_checkpoint(a.layout, a.workdir, a.device)
    image_size = LAYOUTS[a.layout].dims.image_size
    requests = on_own_thread(lambda: build_requests(a.requests, a.media, a.min_new, a.max_new, a.seed,
                                                    image_size))
    kw = {"max_requests": a.slots, "max_tokens": a.kv_budget, "wait_ms": a.wait_ms}

    def load() -> Engine:
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        return Engine.load(ckpt, device=a.device, dtype=dtype)

    # The first batcher's engine thread loads the model; later batchers get the loaded engine.
    # Each is closed (its thread ended) before the next starts: one torch thread alive at a time.
    first = Batcher.loading(load, **kw)
    try:
        engine = first.engine
        for f in [first.submit(r) for r in requests[: min(a.slots, 4)]]:  # warm-up
            f.result()
    finally:
        first.close()
    capacity = measure_capacity(engine, requests, kw)
    log(f"{LAYOUTS[a.layout].label}, {n_params / 1e6:.1f}M params, {dtype} on {a.device}; "
        f"{a.requests} requests ({a.media}, {a.min_new}..{a.max_new} new tokens), {a.slots} slots; "
        f"capacity (static, all at once): {capacity:.2f} requests/s")
    continuous = None if a.static_only else continuous_factory()
    modes: dict[str, BatcherFactory] = {"static": Batcher}
    if continuous is not None:
        modes["continuous"] = continuous
    else:
        print("continuous: not available" + (" (--static-only)" if a.static_only else
                                              " (models.continuous cannot be imported)"), flush=True)
    out: dict[str, Any] = {"capacity": capacity, "runs": {}}
    for load_level in [float(x) for x in a.loads.split(",")]:
        schedule = poisson_schedule(requests, load_level * capacity, a.seed)
        runs: dict[str, dict[str, float]] = {}
        for mode, factory in modes.items():
            batcher = factory(engine, **kw)
            try:
                runs[mode] = drive(batcher, schedule)
            finally:
                batcher.close()
            r = runs[mode]
            print(f"load {load_level:4.0%}  {mode:10s}  p50 {r['p50']:6.2f} s  p99 {r['p99']:6.2f} s  "
                  f"{r['throughput']:6.2f} requests/s  {r['tokens_per_s']:7.1f} tokens/s  "
                  f"occupancy {r['occupancy']:4.0%}", flush=True)
        if "continuous" in runs:
            c, s = runs["continuous"], runs["static"]
            p99, tput = c["p99"] / s["p99"], c["throughput"] / s["throughput"]
            runs["ratios"] = {"p99": p99, "throughput": tput}
            target = ""
            if load_level >= 0.8:
                met = {True: "met", False: "missed"}
                target = (f"  (targets at 80 %: p99 <= 0.50x, {met[p99 <= 0.5]}; "
                          f"throughput >= 1.00x, {met[tput >= 1.0]})")
            print(f"load {load_level:4.0%}  continuous / static: p99 {p99:.2f}x  "
                  f"throughput {tput:.2f}x{target}", flush=True)
        out["runs"][load_level] = runs
    return out


if __name__ == "__main__":
    main()
