"""Where a decoding step's time goes, by batch size: the model's forward pass against the rest
(picking tokens, streaming hooks), for the batched token pick against the row-by-row one.

    python bench/bench_decode_step.py [--layout 8b|small|tiny] [--device cuda] [--batches 1,16,32]
        [--new-tokens 64] [--workdir DIR]

Why: in the worker's GPU run of 2026-11-27 (bench/RESULTS_gpu_worker.md) a batch of 16 took ~74 ms a step
against ~34 ms for one request, where a memory-bound 8B step should cost about the same at 1 and
16 rows. This runs the engine alone (no worker), on its own thread as the worker does, with the
random-weight checkpoint of ``bench/worker_bench_lib.py``'s layouts, one 448 px tile and a
distinct question per row, greedy, every row generating exactly ``--new-tokens`` (a random model
never stops early). For each batch size it prints ms per step and how much of it is the forward
pass (timed with a device sync on both sides), then the same batch with ``on_token`` hooks (the
worker's streaming path), and with tokens picked row by row (the code before the batched pick).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_engine_batch import make_requests, on_own_thread  # noqa: E402
from bench.worker_bench_lib import LAYOUTS, environment, log, prepare_checkpoint  # noqa: E402
from models import generation  # noqa: E402
from models.engine import ChatRequest, Engine  # noqa: E402
from models.generation import Row  # noqa: E402


def row_by_row(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """The token pick as it was before ``generation.next_tokens``: ``_process`` for each row (for
    a greedy row, one argmax and one device sync)."""
    return [generation._process(logits[b], row) for b, row in enumerate(rows)]


class ForwardTimer:
    """Wraps the model's forward: the seconds of each call (device-synchronised on both sides)
    and when the first one (the prefill) ended."""

    def __init__(self, model: Any, device: str) -> None:
        self.calls: list[float] = []
        self.prefill_end = 0.0
        on_gpu = device.startswith("cuda")
        self.sync: Callable[[], None] = torch.cuda.synchronize if on_gpu else (lambda: None)
        inner = model.forward

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.sync()
            end = time.perf_counter()
            self.calls.append(end - t0)
            if len(self.calls) == 1:
                self.prefill_end = end
            return out

        model.forward = timed

    def reset(self) -> None:
        self.calls, self.prefill_end = [], 0.0


def requests(n: int, new_tokens: int, image_size: int, hooks: bool) -> list[ChatRequest]:
    """bench_engine_batch.py's requests (one tile, a distinct question), with a no-op ``on_token``
    on every row when ``hooks``."""
    reqs = make_requests(n, new_tokens, image_size)
    return [dataclasses.replace(r, on_token=lambda _d: None) for r in reqs] if hooks else reqs


def measure(engine: Engine, timer: ForwardTimer, n: int, a: argparse.Namespace, *, hooks: bool = False,
            pick: Callable[[torch.Tensor, list[Row]], list[int]] | None = None) -> dict[str, float]:
    """ms per decoding step (from the end of the prefill to the end of the batch) and the
    forward's part of it; the fastest of ``--repeat`` runs."""
    original = generation.next_tokens
    if pick is not None:
        generation.next_tokens = pick
    try:
        runs = []
        for _ in range(a.repeat):
            reqs = requests(n, a.new_tokens, a.image_size, hooks)
            timer.reset()
            results = engine.generate_batch(reqs)
            timer.sync()
            decode = time.perf_counter() - timer.prefill_end
            assert all(r.output_tokens == a.new_tokens for r in results), "a row stopped early"
            steps = len(timer.calls) - 1  # the first forward is the prefill
            runs.append((1000 * decode / steps, 1000 * sum(timer.calls[1:]) / steps, timer.calls[0], steps))
    finally:
        generation.next_tokens = original
    ms_step, ms_forward, prefill, steps = min(runs)
    return {"ms_step": ms_step, "ms_forward": ms_forward, "prefill_s": prefill, "steps": steps}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batches", default="1,16,32")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args(argv)
    a.image_size = LAYOUTS[a.layout].dims.image_size
    dtype = a.dtype if a.dtype != "auto" else ("float32" if a.device == "cpu" else "bfloat16")
    env = environment(a.device)
    log(f"{env['device_name']}; torch {env['torch']}, transformers {env['transformers']}")
    ckpt, n_params, _, _ = prepare_checkpoint(a.layout, a.workdir, a.device)
    rows: list[dict[str, Any]] = []

    def work() -> None:
        engine = Engine.load(ckpt, device=a.device, dtype=dtype)
        timer = ForwardTimer(engine.model, a.device)
        # Warm-up at every batch size, so that no size pays for the first kernels of its shapes
        # (on the H200 the first size timed, batch 1, came out slower than batch 16).
        sizes = [int(x) for x in a.batches.split(",")]
        for n in sizes:
            measure(engine, timer, n, argparse.Namespace(**{**vars(a), "repeat": 1, "new_tokens": 4}))
        log(f"loaded {LAYOUTS[a.layout].label} ({n_params / 1e9:.2f}B params, {dtype} on {a.device})")
        for n in sizes:
            for label, kw in (("batched pick", {}), ("batched pick + on_token", {"hooks": True}),
                              ("row-by-row pick", {"pick": row_by_row})):
                if n == 1 and label != "batched pick":
                    continue
                r = {"batch": n, "variant": label, **measure(engine, timer, n, a, **kw)}  # type: ignore[arg-type]
                rows.append(r)
                print(f"batch {n:3d}  {label:24s} {r['ms_step']:7.1f} ms/step  "
                      f"forward {r['ms_forward']:7.1f} ms ({100 * r['ms_forward'] / r['ms_step']:3.0f}%)  "
                      f"{1000 * n / r['ms_step']:8.0f} tok/s  prefill {r['prefill_s']:.2f} s",
                      flush=True)

    on_own_thread(work)  # as the worker's engine thread (see on_own_thread, models.batcher)
    if rows:
        one = next((r for r in rows if r["batch"] == 1), None)
        if one is not None:
            for r in rows:
                if r["batch"] > 1:
                    print(f"batch {r['batch']} / batch 1 step time ({r['variant']}): "
                          f"{r['ms_step'] / one['ms_step']:.2f}x", flush=True)
    return rows


if __name__ == "__main__":
    main()
