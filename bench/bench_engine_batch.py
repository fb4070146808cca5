"""Batched engine throughput vs one request at a time, same model and inputs (CPU by default).

    python bench/bench_engine_batch.py [--requests 16] [--new-tokens 48] [--hidden 512] ...

Writes a random-weight checkpoint in the *original* InternVL2 layout (InternViT + InternLM2 with
fused wqkv and dynamic-NTK rope, so the load path converts it like a real one) into a temporary
folder, with a small BPE tokenizer trained on the prompt text (``--toy-tokenizer``: the kit's
byte-level one, which makes prompts about 3x longer than real tokenizers would), loads it with
``Engine.load``, then times:

- one at a time: ``engine.generate_batch([r])`` for each request in turn;
- batched: every request submitted to a :class:`models.batcher.Batcher` (max 16 per batch) from
  its own thread, as the worker does, until all futures are done.

Each request: one tile (default 224x224 = 64 image tokens, so that one request alone takes about
1 s on 2 CPU cores; ``--image-size 448`` = InternVL2's 256), a distinct question, greedy,
``--new-tokens`` new tokens (the random model never emits the stop token, so every request
generates exactly that many). Both runs must produce identical token ids (checked).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkpoint_writer import SUBJECTS, Dims, write_model, write_tokenizer  # noqa: E402
from models.batcher import Batcher  # noqa: E402
from models.engine import ChatRequest, Engine  # noqa: E402
from models.generation import GenerationParams  # noqa: E402

T = TypeVar("T")


def write_checkpoint(folder: Path, a: argparse.Namespace) -> int:
    """The small float32 checkpoint of this benchmark (and bench_worker_batching.py) from the
    size options in ``a``; returns the parameter count."""
    dims = Dims(image_size=a.image_size, vit_hidden=a.vit_hidden, vit_layers=a.vit_layers,
                vit_heads=a.vit_heads, vit_intermediate=4 * a.vit_hidden, hidden=a.hidden,
                layers=a.layers, heads=a.heads, kv_heads=a.kv_heads, intermediate=a.intermediate)
    return write_model(folder, dims, dtype=torch.float32, device="cpu", toy_tokenizer=a.toy_tokenizer)


def on_own_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a thread that ends with it. On the CPU, OpenMP keeps a thread team per thread
    that ran torch, and a team left by a thread that is still alive (this main thread) makes every
    other thread's torch about 2x slower on 2 cores; so the main thread never runs torch here, and
    the batcher's engine thread is the only one alive that has, as in the worker (models.batcher)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def make_requests(n: int, new_tokens: int, image_size: int = 448) -> list[ChatRequest]:
    subjects = SUBJECTS
    g = torch.Generator().manual_seed(1)
    return [ChatRequest(f"Describe {subjects[i % len(subjects)]} in picture {i}.",
                        pixel_values=torch.randn(1, 3, image_size, image_size, generator=g),
                        params=GenerationParams(max_new_tokens=new_tokens)) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--image-size", type=int, default=224,
                    help="224 = 64 image tokens per tile (InternVL2 itself: 448 = 256)")
    ap.add_argument("--vit-hidden", type=int, default=64)
    ap.add_argument("--vit-layers", type=int, default=2)
    ap.add_argument("--vit-heads", type=int, default=4)
    ap.add_argument("--toy-tokenizer", action="store_true",
                    help="the kit's byte-level toy tokenizer (about 3x longer prompts)")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs of both modes (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    def load() -> tuple[int, Engine, list[ChatRequest]]:
        with tempfile.TemporaryDirectory() as tmp:
            n_params = write_checkpoint(Path(tmp), a)
            engine = Engine.load(tmp, device="cpu", dtype="float32")
        return n_params, engine, make_requests(a.requests, a.new_tokens, a.image_size)

    n_params, engine, reqs = on_own_thread(load)
    prompt = engine.prepare(reqs[0]).prompt_tokens
    print(f"model: random InternViT(hidden {a.vit_hidden}, {a.vit_layers} layers) + "
          f"InternLM2(hidden {a.hidden}, {a.layers} layers, {a.heads}/{a.kv_heads} heads, "
          f"ffn {a.intermediate}, vocab {engine.info.vocab_size}); "
          f"{n_params / 1e6:.1f}M params, float32, {engine.info.attn_implementation}, "
          f"{torch.get_num_threads()} threads")
    print(f"requests: {a.requests} x (1 tile {a.image_size}px = {engine.info.num_image_token} image tokens, "
          f"~{prompt} prompt tokens, {a.new_tokens} new tokens, greedy)")
    on_own_thread(lambda: engine.generate_batch(reqs[:2]))  # warm-up
    singles, batches, same = [], [], True
    for _ in range(a.repeat):  # alternate, so that a noisy neighbour hits both modes alike
        t0 = time.perf_counter()
        single = on_own_thread(lambda: [engine.generate_batch([r])[0] for r in reqs])
        singles.append(time.perf_counter() - t0)
        # The batcher starts an idle engine on the first request it gets; to time a batch of
        # --requests (what this benchmark compares), every request is submitted before its
        # engine thread starts. (The worker benchmark measures real arrival patterns.)
        with Batcher(engine, max_requests=16, wait_ms=50, start=False) as batcher, \
                ThreadPoolExecutor(a.requests) as pool:
            t0 = time.perf_counter()
            futures = list(pool.map(batcher.submit, reqs))
            batcher.start()
            batched = [f.result() for f in futures]
            batches.append(time.perf_counter() - t0)
        same = same and [s.output_ids for s in single] == [b.output_ids for b in batched]
    t_single, t_batch = statistics.median(singles), statistics.median(batches)
    print(f"one at a time: {t_single:.2f} s per {a.requests} requests (median of {a.repeat}), "
          f"{t_single / a.requests:.3f} s/request, {a.requests / t_single:.2f} requests/s")
    print(f"batched:       {t_batch:.2f} s per {a.requests} requests (median of {a.repeat}), "
          f"{a.requests / t_batch:.2f} requests/s (largest batch {batcher.stats.largest_batch})")
    print(f"ratio: {t_single / t_batch:.2f}x   identical ids: {same}   load average: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not same:
        sys.exit(1)


# bench_worker_batching.py imports write_checkpoint from here
__all__ = ["SUBJECTS", "make_requests", "write_checkpoint", "write_tokenizer"]


if __name__ == "__main__":
    main()
