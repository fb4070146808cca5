"""Batched engine vs a one-at-a-time ``chat()`` loop, InternVL2-8B layout, random weights.

    python bench/bench_gpu_engine.py [--layout 8b|tiny] [--images 256] [--max-tiles 6]
        [--new-tokens 128] [--time-limit S] [--workdir DIR] [--results bench/RESULTS_gpu_engine.md]

``--layout 8b`` (default) writes a random-weight checkpoint in the ORIGINAL layout of
OpenGVLab/InternVL2-8B (InternViT-300M-448px, mlp1, internlm2_5-7b-chat: 8.1B parameters, 16 GB in
bf16, sharded safetensors) into ``--workdir``, drawn on the GPU when there is one, or reuses the
one a previous run left there; ``--layout tiny`` is the same path at toy sizes (CPU, seconds).
The model is loaded once with ``Engine.load`` (converted on load like a real checkpoint). Inputs:
``--images`` images cycled from the conformance kit's 12, each preprocessed once with
``models.preprocess.load_image(max_num=--max-tiles)``, a distinct question each, greedy,
``--new-tokens`` new tokens (the random model almost never emits the stop token). Then, after a
warm-up, the same requests two ways:

- batched: all submitted to a ``models.batcher.Batcher`` with the worker's settings (16 requests,
  32768 tokens, 20 ms), as the worker's task threads do;
- one at a time, in the style of the model card's ``chat()``: ``engine.chat(question,
  pixel_values)`` per image, i.e. that image's vision pass and then its generation alone.
  ``--time-limit`` stops this loop early; the rate then comes from the images done (printed).

Token ids are compared per request. On the CPU in float32 they must be identical (asserted). On a
GPU in bf16 a batch runs other kernel shapes than a single request, so the last bits and then
greedy choices may differ: the fraction of identical outputs is reported instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkpoint_writer import (  # noqa: E402
    INTERNVL2_8B,
    SUBJECTS,
    Dims,
    checkpoint_bytes,
    existing_checkpoint,
    write_model,
)
from models.batcher import Batcher  # noqa: E402
from models.engine import ChatRequest, ChatResult, Engine  # noqa: E402
from models.generation import GenerationParams  # noqa: E402
from models.preprocess import load_image  # noqa: E402

KIT_IMAGES = ROOT / "tests" / "data" / "conformance" / "images"
LAYOUTS = {
    "8b": INTERNVL2_8B,
    # same code path, toy sizes: 448 px tiles (256 image tokens each) so prompts are as long as 8B's
    "tiny": Dims(image_size=448, vit_hidden=64, vit_layers=2, vit_heads=4, vit_intermediate=256,
                 hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256),
}
#: shard size: the 8B checkpoint in ~4 GB shards like the published one; the tiny one in small
#: shards so that its run, too, goes through model.safetensors.index.json
SHARD_BYTES = {"8b": 4_000_000_000, "tiny": 400_000}
_T0 = time.perf_counter()


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - _T0:6.1f}s] {msg}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="8b")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--max-tiles", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    ap.add_argument("--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu), bfloat16, ...")
    ap.add_argument("--attn", default="auto", help="attention implementation (auto, sdpa, eager, ...)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="checkpoint folder, reused when it holds one with the same settings "
                         "(default: <tmp>/captionq-bench-<layout>)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds after which the one-at-a-time loop stops (rate from the images done)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds from start by which the run must end: the one-at-a-time loop (run "
                         "last) gets at most what is left, less a margin, and at least one image")
    ap.add_argument("--batch-requests", type=int, default=16, help="Batcher max_requests (worker default)")
    ap.add_argument("--batch-tokens", type=int, default=32768, help="Batcher max_tokens (worker default)")
    ap.add_argument("--results", type=Path, default=None, help="append a dated row to this Markdown file")
    return ap.parse_args(argv)


def prepare_checkpoint(a: argparse.Namespace, dims: Dims, device: str) -> tuple[Path, int, bool, float]:
    """(folder, parameters, reused, seconds spent writing)."""
    folder = a.workdir or Path(tempfile.gettempdir()) / f"captionq-bench-{a.layout}"
    file_dtype = torch.bfloat16  # like the published InternVL2-8B; cast to --dtype on load
    found = existing_checkpoint(folder, dims, file_dtype)
    if found is not None:
        log(f"checkpoint: reusing {folder} ({_count(found)} parameters, written by an earlier run)")
        return folder, found, True, 0.0
    size = checkpoint_bytes(dims, file_dtype)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < size * 1.05:
        raise SystemExit(f"{folder}: {free / 1e9:.1f} GB free, the checkpoint needs {size / 1e9:.1f} GB")
    gen = "cuda" if device.startswith("cuda") else "cpu"
    # drawing on a GPU is nearly free: the time is the host copy and the file writes (~1 GB/s
    # to page cache and disk); on a CPU, drawing float32 normals (~0.1 GB/s) dominates
    estimate = size / (1e9 if gen == "cuda" else 1e8)
    log(f"checkpoint: writing {size / 1e9:.2f} GB ({file_dtype}, drawn on {gen}) to {folder}; "
        f"estimated {estimate:.0f} s")
    t0 = time.perf_counter()
    params = write_model(folder, dims, dtype=file_dtype, device=gen if gen == "cpu" else device,
                         shard_bytes=SHARD_BYTES[a.layout], log=log)
    took = time.perf_counter() - t0
    log(f"checkpoint: {_count(params)} parameters written in {took:.1f} s")
    return folder, params, False, took


def make_requests(n: int, max_tiles: int, new_tokens: int, image_size: int) -> list[ChatRequest]:
    """``n`` requests cycling over the kit's images (each preprocessed once), distinct questions."""
    images = sorted(KIT_IMAGES.iterdir())
    pixels = [torch.from_numpy(load_image(p.read_bytes(), max_num=max_tiles, image_size=image_size)
                               .pixel_values) for p in images]
    params = GenerationParams(max_new_tokens=new_tokens)
    return [ChatRequest(f"Describe {SUBJECTS[i % len(SUBJECTS)]} in picture {i}.",
                        pixel_values=pixels[i % len(pixels)], params=params) for i in range(n)]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def run_sequential(engine: Engine, reqs: list[ChatRequest], time_limit: float | None
                   ) -> tuple[float, list[ChatResult]]:
    out: list[ChatResult] = []
    _sync()
    t0 = time.perf_counter()
    for i, r in enumerate(reqs):
        out.append(engine.chat(r.question, pixel_values=r.pixel_values, params=r.params))
        elapsed = time.perf_counter() - t0
        if (i + 1) % 8 == 0 or i + 1 == len(reqs):
            log(f"  one at a time: {i + 1}/{len(reqs)} done, {elapsed:.1f} s")
        if time_limit is not None and elapsed >= time_limit and i + 1 < len(reqs):
            log(f"  one at a time: time limit {time_limit:.0f} s reached after {i + 1} of {len(reqs)}")
            break
    _sync()
    return time.perf_counter() - t0, out


def run_batched(engine: Engine, reqs: list[ChatRequest], a: argparse.Namespace
                ) -> tuple[float, list[ChatResult], str]:
    # the worker's settings; every request is submitted at once, like a backlog of queued jobs
    with Batcher(engine, max_requests=a.batch_requests, max_tokens=a.batch_tokens, wait_ms=20) as batcher:
        _sync()
        t0 = time.perf_counter()
        futures = [batcher.submit(r) for r in reqs]
        out = []
        for i, f in enumerate(futures):
            out.append(f.result())
            if (i + 1) % 64 == 0 or i + 1 == len(futures):
                log(f"  batched: {i + 1}/{len(futures)} done, {time.perf_counter() - t0:.1f} s")
        _sync()
        took = time.perf_counter() - t0
        s = batcher.stats
    return took, out, f"{s.batches} batches, largest {s.largest_batch}"


def compare(seq: list[ChatResult], bat: list[ChatResult]) -> tuple[int, int, float]:
    """(identical outputs, outputs compared, mean shared-prefix fraction)."""
    pairs = list(zip(seq, bat, strict=False))
    same = sum(s.output_ids == b.output_ids for s, b in pairs)
    prefix = []
    for s, b in pairs:
        n = next((k for k, (x, y) in enumerate(zip(s.output_ids, b.output_ids, strict=False)) if x != y),
                 min(len(s.output_ids), len(b.output_ids)))
        prefix.append(n / max(1, len(s.output_ids)))
    return same, len(pairs), sum(prefix) / max(1, len(prefix))


def environment(device: str) -> dict[str, str]:
    import transformers

    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else \
        f"CPU {platform.machine()} x{os.cpu_count()} ({torch.get_num_threads()} torch threads)"
    return {"device_name": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    dims = LAYOUTS[a.layout]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    env = environment(device)
    if a.layout == "8b" and device == "cpu":
        log("WARNING: the 8B layout on a CPU needs ~50 GB of memory and hours; --layout tiny checks the path")
    log(f"{env['device_name']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"Python {env['python']}")
    folder, params, reused, write_s = prepare_checkpoint(a, dims, device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    engine = Engine.load(folder, device=device, dtype=a.dtype, attn_implementation=a.attn)
    load_s = time.perf_counter() - t0
    info = engine.info
    log(f"loaded in {load_s:.1f} s: {_count(params)} parameters, {info.dtype}, {info.device}, "
        f"{info.attn_implementation} attention, vocab {info.vocab_size}")
    reqs = make_requests(a.images, a.max_tiles, a.new_tokens, info.image_size)
    tiles = sum(int(r.pixel_values.shape[0]) for r in reqs if r.pixel_values is not None)
    prompt = sum(engine.prepare(r).prompt_tokens for r in reqs) / len(reqs)
    log(f"inputs: {a.images} images ({tiles} tiles, {tiles / len(reqs):.2f} per image, max "
        f"{a.max_tiles}), ~{prompt:.0f} prompt tokens on average, {a.new_tokens} new tokens, greedy")

    warm = [ChatRequest(r.question, pixel_values=r.pixel_values, params=GenerationParams(max_new_tokens=4))
            for r in reqs[:2]]
    engine.chat(warm[0].question, pixel_values=warm[0].pixel_values, params=warm[0].params)
    engine.generate_batch(warm)  # kernels and allocator of both modes, outside the timings
    log("warm-up done; batched run")

    _reset_peak()
    t_bat, bat, batch_note = run_batched(engine, reqs, a)
    peak_bat = _peak_gb()
    limit = a.time_limit
    if a.deadline is not None:  # a slow batched run must not cost the whole device command
        left = max(0.0, a.deadline - (time.perf_counter() - _T0) - 20.0)
        limit = left if limit is None else min(limit, left)
    log(f"one-at-a-time run (chat() style){'' if limit is None else f', limit {limit:.0f} s'}")
    _reset_peak()
    t_seq, seq = run_sequential(engine, reqs, limit)
    peak_seq = _peak_gb()

    n_seq, n = len(seq), len(reqs)
    seq_ips, bat_ips = n_seq / t_seq, n / t_bat
    seq_tps = sum(r.output_tokens for r in seq) / t_seq
    bat_tps = sum(r.output_tokens for r in bat) / t_bat
    same, compared, prefix = compare(seq, bat)
    exact = info.device == "cpu" and info.dtype == "float32"
    partial = n_seq < n
    print(f"device: {env['device_name']}; torch {env['torch']}, transformers {env['transformers']}")
    print(f"model: {a.layout} layout, {_count(params)} parameters, {info.dtype}, "
          f"{info.attn_implementation}; checkpoint {'reused' if reused else f'written in {write_s:.1f} s'}, "
          f"loaded in {load_s:.1f} s")
    print(f"one at a time: {seq_ips:.3f} images/s, {seq_tps:.1f} tokens/s, {t_seq / n_seq:.2f} s/image; "
          f"peak GPU memory {peak_seq:.1f} GiB" + (
              f"\n  STOPPED at the time limit after {n_seq} of {n} images ({t_seq:.1f} s): rate from those "
              f"{n_seq}; the full run would take ~{t_seq / n_seq * n:.0f} s (extrapolated)" if partial else
              f" ({n} images in {t_seq:.1f} s)"))
    print(f"batched:       {bat_ips:.3f} images/s, {bat_tps:.1f} tokens/s ({n} images in {t_bat:.1f} s, "
          f"{batch_note}); peak GPU memory {peak_bat:.1f} GiB")
    print(f"ratio (batched / one at a time, images/s): {bat_ips / seq_ips:.2f}x"
          + (" (one-at-a-time rate extrapolated)" if partial else ""))
    print(f"identical token ids: {same}/{compared} requests compared, mean shared prefix "
          f"{prefix:.1%}" + ("" if exact else f" ({info.dtype} on {info.device}: batch and single kernels "
                                                "may round differently, so this is reported, not asserted)"))
    summary = {"layout": a.layout, "images": n, "max_tiles": a.max_tiles, "tiles": tiles,
               "new_tokens": a.new_tokens, "seq_images": n_seq, "seq_ips": seq_ips, "bat_ips": bat_ips,
               "ratio": bat_ips / seq_ips, "seq_tps": seq_tps, "bat_tps": bat_tps, "peak_seq_gib": peak_seq,
               "peak_bat_gib": peak_bat, "identical": same, "compared": compared, "prefix": prefix,
               "extrapolated": partial, "reused": reused, "write_s": write_s, "load_s": load_s,
               "dtype": info.dtype, "attn": info.attn_implementation, "prompt_tokens": prompt,
               "batches": batch_note, **env}
    if a.results is not None:
        from bench.gpu_results import append_row

        append_row(a.results, summary)
        log(f"results appended to {a.results}")
    if exact and same != compared:
        raise SystemExit(f"token ids differ between the modes in {compared - same} of {compared} requests")
    return summary


if __name__ == "__main__":
    main()
