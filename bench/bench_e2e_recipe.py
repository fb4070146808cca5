"""End to end through the API against the model card's ``batch_chat`` recipe, same inputs.

    python bench/bench_e2e_recipe.py [--layout 8b|small|tiny] [--device cuda] [--images 256]
        [--max-tiles 6] [--new-tokens 128] [--recipe-batch 16] [--deadline S] [--workdir DIR]
        [--results bench/RESULTS_gpu_e2e.md]

Inputs: ``--images`` distinct synthetic 1920x1080 JPEGs (deterministic colour fields with film
grain, written once to ``<workdir>/photos``), a distinct question each, at most ``--max-tiles``
tiles (a 16:9 picture gets 2 tiles + the thumbnail at 6), greedy, ``--new-tokens`` new tokens (the
random model almost never emits the stop token, so every answer has that length). The model is a
random-weight InternVL2 in the original layout (bench/worker_bench_lib.py's layouts; ``8b`` is
InternVL2-8B's, 16 GB of bf16, reused from ``--workdir``).

1. **Service**: the API and one real ``captionq worker --queues gpu,io`` process with the
   service's default settings but ``--slots`` and ``--kv-tokens`` (64 and 65,536: a GPU's), in
   the embedded local mode (SQLite, kombu's filesystem broker,
   ``file://`` media: the GPU machine has no PostgreSQL, Redis or S3), as
   bench/bench_worker_batching.py runs it. After 4 warm-up jobs, one ``POST /v1/batches`` of every
   image (``max_tiles``, the question, ``max_new_tokens``, ``do_sample: false``), timed until the
   batch is ``completed``. The worker fetches, decodes and tiles each image itself.
2. **Recipe**: the same checkpoint loaded in this process with ``Engine.load`` (the service's
   conversion, dtype and attention), then the card's ``batch_chat`` over chunks of
   ``--recipe-batch`` images (bench/batch_chat_recipe.py), timed from the first file read.

3. **Engine alone**: the same engine, in this process, with the service's batching settings, fed
   the same requests already tiled, all at once: what the worker's engine could do with no
   service around it (the target: the service at least 0.9x of it).

Printed side by side: images/s and output tokens/s of each, and the ratio; the targets are at
least 12 images/s for the service on an H100/H200 and at least 3x the recipe. ``--deadline``
(seconds from start by which the run must end) stops either half early: the service's batch is
canceled after its share of the time and the recipe starts no chunk it cannot finish; rates then
come from what finished, and the output and the results row say so. In float32 on the CPU the two
halves must give the same answers (asserted); elsewhere the share of identical answers is shown.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_worker_batching import engine_summary, run_batch  # noqa: E402
from bench.checkpoint_writer import SUBJECTS  # noqa: E402
from bench.gpu_results import write_results  # noqa: E402
from bench.worker_bench_lib import LAYOUTS, count, environment, log, prepare_checkpoint  # noqa: E402
from tests.worker.stack import Stack, build_local_stack, destroy_stack  # noqa: E402

_T0 = time.perf_counter()
TARGET_IPS, TARGET_RATIO = 12.0, 3.0
WARMUP = 4
ENGINE_ALONE_S = 45.0  # what the deadline keeps for the engine-alone leg


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="8b")
    ap.add_argument("--device", default="cuda", help="cpu, cuda, cuda:N")
    ap.add_argument("--dtype", default="auto", help="auto (float32 on cpu, bfloat16 on cuda), bfloat16, ...")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--max-tiles", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--recipe-batch", type=int, default=16, help="images per batch_chat call")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="the worker's task threads (default: the worker's own, 2 x slots)")
    ap.add_argument("--slots", type=int, default=64,
                    help="decode slots of the service's engine and of the engine alone")
    ap.add_argument("--batch-mode", choices=["continuous", "static"], default="continuous")
    ap.add_argument("--kv-tokens", type=int, default=65536,
                    help="KV-cache positions over all slots (the service's batch_max_tokens)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds from start by which the run must end (rates then from what finished)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="checkpoint folder, reused when it holds one with the same settings; the photos go "
                         "to its 'photos' subfolder (default <tmp>/captionq-bench-<layout>)")
    ap.add_argument("--ready-timeout", type=float, default=600.0, help="seconds for the worker to load")
    ap.add_argument("--results", type=Path, default=None, help="append a dated row to this Markdown file")
    return ap.parse_args(argv)


def questions(n: int) -> list[str]:
    return [f"Describe {SUBJECTS[i % len(SUBJECTS)]} in picture {i}." for i in range(n)]


def jobs_body(urls: list[str], qs: list[str], a: argparse.Namespace, tag: str) -> dict[str, Any]:
    return {"jobs": [{"media": [{"type": "image", "url": u, "max_tiles": a.max_tiles}], "prompts": [q],
                      "custom_id": f"{tag}-{i}"} for i, (u, q) in enumerate(zip(urls, qs, strict=True))],
            "defaults": {"generation": {"max_new_tokens": a.new_tokens, "do_sample": False}}}


def elapsed() -> float:
    return time.perf_counter() - _T0


def run_service(stack: Stack, urls: list[str], qs: list[str], a: argparse.Namespace) -> dict[str, Any]:
    """The worker loaded and warmed up, then every image in one batch; the worker is stopped after.
    Under a deadline the batch gets half the time left after what the recipe needs at least (its
    model load, about the worker's, and a first chunk)."""
    t0 = time.perf_counter()
    w = stack.start_worker(queues="gpu,io", concurrency=a.concurrency, wait=False)
    killed = False
    try:
        stack.wait_ready(w, timeout=a.ready_timeout)
        ready_s = time.perf_counter() - t0
        run_batch(stack, jobs_body(urls[:WARMUP], qs[:WARMUP], a, "warm"), 3600.0)
        limit = None
        if a.deadline is not None:
            recipe_floor = ready_s + 60.0 + ENGINE_ALONE_S
            limit = max(0.0, (a.deadline - elapsed() - recipe_floor) / 2)
        log(f"service: worker ready in {ready_s:.1f} s, warm-up done; {len(urls)} images"
            + ("" if limit is None else f", limit {limit:.0f} s"))
        r = run_batch(stack, jobs_body(urls, qs, a, "job"), 3600.0, limit)
        if r["partial"]:  # the canceled rest need not finish: running jobs would hold a warm shutdown
            stack.stop_worker(w, signal.SIGKILL)
            killed = True
        lines = r["lines"]
        metrics = [stack.get(ln["job_id"])["metrics"] for ln in lines]
    except BaseException:
        print(f"--- worker log, its end ---\n{w.text()[-6000:]}", flush=True)
        raise
    finally:
        if not killed:
            stack.stop_worker(w)
    return {"images": len(lines), "seconds": r["elapsed"], "partial": r["partial"], "ready_s": ready_s,
            "ips": len(lines) / r["elapsed"], "tps": sum(m["output_tokens"] for m in metrics) / r["elapsed"],
            "tiles": sum(m["tiles"] for m in metrics), "engine": engine_summary(w.text()),
            "texts": {int(ln["custom_id"].split("-")[1]): ln["output"]["text"] for ln in lines}}


def run_recipe_half(ckpt: Path, files: list[Path], qs: list[str], a: argparse.Namespace, dtype: str
                    ) -> dict[str, Any]:
    import torch

    from bench.batch_chat_recipe import run_chunk, run_recipe
    from models.engine import Engine

    t0 = time.perf_counter()
    engine = Engine.load(ckpt, device=a.device, dtype=dtype)
    load_s = time.perf_counter() - t0
    run_chunk(engine, files[:2], qs[:2], a.max_tiles, 2)  # kernels, allocator, the resize's compilation
    # the engine-alone leg comes after the recipe: leave it ENGINE_ALONE_S
    stop_at = None if a.deadline is None else _T0 + a.deadline - 10.0 - ENGINE_ALONE_S
    log(f"recipe: loaded in {load_s:.1f} s ({engine.info.attn_implementation} attention), warm-up done; "
        f"{len(files)} images in chunks of {a.recipe_batch}")
    r = run_recipe(engine, files, qs, batch=a.recipe_batch, max_tiles=a.max_tiles, new_tokens=a.new_tokens,
                   stop_at=stop_at, log=log)
    peak = torch.cuda.max_memory_allocated() / 2**30 if a.device.startswith("cuda") else 0.0
    alone = run_engine_alone(engine, files, qs, a)
    return {"images": r.images, "seconds": r.seconds, "partial": r.partial, "ips": r.images_per_s,
            "tps": r.output_tokens / r.seconds, "tiles": r.tiles, "texts": r.texts, "load_s": load_s,
            "attn": engine.info.attn_implementation, "peak_gib": peak, "alone": alone}


def run_engine_alone(engine: Any, files: list[Path], qs: list[str], a: argparse.Namespace) -> dict[str, Any]:
    """The service's engine with the service's batching settings, in this process, fed the same
    requests already tiled (the worker's task threads do that part), all submitted at once."""
    import torch

    from models.batcher import Batcher
    from models.continuous import ContinuousBatcher
    from models.engine import ChatRequest
    from models.generation import GenerationParams
    from models.preprocess import load_image

    n = len(files)
    if a.deadline is not None and a.deadline - elapsed() < 30:
        log("engine alone: skipped (deadline)")
        return {"images": 0, "ips": float("nan"), "seconds": 0.0}
    params = GenerationParams(max_new_tokens=a.new_tokens)
    reqs = []
    for f, q in zip(files, qs, strict=True):
        tiles = load_image(f.read_bytes(), max_num=a.max_tiles, image_size=engine.info.image_size)
        reqs.append(ChatRequest(q, pixel_values=torch.from_numpy(tiles.pixel_values), params=params))
    kind = ContinuousBatcher if a.batch_mode == "continuous" else Batcher
    with kind(engine, max_requests=a.slots, max_tokens=a.kv_tokens) as batcher:
        t0 = time.perf_counter()
        futures = [batcher.submit(r) for r in reqs]
        done = [f.result() for f in futures]
        took = time.perf_counter() - t0
    log(f"engine alone ({a.batch_mode}, {a.slots} slots): {n} images in {took:.1f} s = "
        f"{n / took:.2f} images/s")
    return {"images": n, "ips": n / took, "seconds": took, "texts": {i: r.text for i, r in enumerate(done)}}


HEADER = """# End to end through the API vs the model card's `batch_chat`, on a GPU

Images/s through the whole service (API + one real worker process, embedded local mode: SQLite,
kombu's filesystem broker, `file://` media; the service's default settings) against the model
card's recipe (`load_image`, `batch_chat` = one static `generate` over a left-padded chunk of B
images, chunk after chunk) on the same synthetic 1920x1080 JPEGs, questions and checkpoint (a
random-weight InternVL2 in the original layout; `8b` = InternVL2-8B's, bf16). Greedy; every answer
runs to the token limit. Produced by `bench/bench_e2e_recipe.py`; a GPU machine runs it through
`bench/gpu_session_e2e.sh` (BENCHMARKS.md, GPU section). A rate marked "(partial: N)" comes from
the first N images only (`--deadline`). Targets: service ≥ 12 images/s on an H100/H200 and ≥ 3x
the recipe.
"""

COLUMNS = ["run", "device", "layout, dtype", "images (tiles) x new tokens", "recipe img/s, chunk size",
           "service img/s", "ratio", "identical answers", "torch / transformers"]


def _rate(h: dict[str, Any]) -> str:
    return f"{h['ips']:.3f}" + (f" (partial: {h['images']})" if h["partial"] else "")


def append_row(path: Path, s: dict[str, Any]) -> None:
    svc, rec = s["service"], s["recipe"]
    cells = [time.strftime("%Y-%m-%d %H:%M"), s["device_name"], f"{s['layout']}, {s['dtype']}",
             f"{s['images']} ({svc['tiles'] / max(1, svc['images']):.0f} per image, max {s['max_tiles']}) x "
             f"{s['new_tokens']}", f"{_rate(rec)}, B {s['recipe_batch']}", _rate(svc),
             f"**{s['ratio']:.2f}x**" + (" (partial)" if s["partial"] else ""),
             f"{s['identical']}/{s['compared']}", f"{s['torch']} / {s['transformers']}"]
    latest = (f"Latest run: {s['device_name']}, Python {s['python']}; {count(s['params'])} parameters, "
              f"checkpoint {'reused' if s['reused'] else 'written'}; worker ready in {svc['ready_s']:.0f} s, "
              f"recipe model loaded in {rec['load_s']:.0f} s ({rec['attn']} attention, peak "
              f"{rec['peak_gib']:.1f} GiB); {svc['engine']}.")
    write_results(path, HEADER, latest, COLUMNS, "| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    dtype = a.dtype if a.dtype != "auto" else ("float32" if a.device == "cpu" else "bfloat16")
    if a.device == "cpu":
        import torch

        torch.set_num_threads(1)  # the worker process shares the cores; one OpenMP team here
    env = environment(a.device)
    log(f"{env['device_name']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"Python {env['python']}")
    from bench.batch_chat_recipe import synthetic_photos

    workdir = a.workdir or Path(tempfile.gettempdir()) / f"captionq-bench-{a.layout}"
    ckpt, n_params, reused, _ = prepare_checkpoint(a.layout, workdir, a.device)
    files = synthetic_photos(workdir / "photos", a.images)
    qs = questions(a.images)
    log(f"model: random InternVL2 ({LAYOUTS[a.layout].label}), {count(n_params)} params, {dtype} on "
        f"{a.device}; {a.images} photos 1920x1080 ready; max {a.max_tiles} tiles, {a.new_tokens} new tokens")
    with tempfile.TemporaryDirectory() as tmp:
        stack = build_local_stack(Path(tmp), model=str(ckpt), device=a.device, dtype=dtype,
                                  batch_max_requests=a.slots, batch_max_tokens=a.kv_tokens,
                                  batch_mode=a.batch_mode)
        try:
            urls = [stack.put_file(f) for f in files]
            svc = run_service(stack, urls, qs, a)
        finally:
            destroy_stack(stack)
    rec = run_recipe_half(ckpt, files, qs, a, dtype)
    common = sorted(set(svc["texts"]) & set(rec["texts"]))
    same = sum(svc["texts"][k] == rec["texts"][k] for k in common)
    ratio = svc["ips"] / rec["ips"]
    partial = svc["partial"] or rec["partial"]
    for name, h in (("recipe ", rec), ("service", svc)):
        print(f"{name}: {h['ips']:.3f} images/s, {h['tps']:.1f} tokens/s ({h['images']} images, "
              f"{h['tiles']} tiles, in {h['seconds']:.1f} s)"
              + (f"\n  STOPPED at the deadline after {h['images']} of {a.images} images: rate from those"
                 if h["partial"] else ""), flush=True)
    peak = f", peak GPU memory {rec['peak_gib']:.1f} GiB" if a.device.startswith("cuda") else ""
    print(f"  service {svc['engine']}; recipe: batch_chat over chunks of {a.recipe_batch}, "
          f"{rec['attn']} attention{peak}")
    big_gpu = any(k in env["device_name"] for k in ("H100", "H200"))
    print(f"ratio (service / recipe, images/s): {ratio:.2f}x{' (from partial runs)' if partial else ''}; "
          f"target ≥ {TARGET_RATIO:.0f}x {'met' if ratio >= TARGET_RATIO else 'missed'}")
    print(f"service images/s: {svc['ips']:.2f}; target ≥ {TARGET_IPS:.0f} on an H100/H200 "
          + (("met" if svc["ips"] >= TARGET_IPS else "missed") if big_gpu else "(not applicable here)"))
    print(f"identical answers: {same}/{len(common)} images done by both")
    alone = rec["alone"]
    worker_ratio = svc["ips"] / alone["ips"] if alone["images"] else float("nan")
    print(f"engine alone ({a.batch_mode}, {a.slots} slots, tiles ready): {alone['ips']:.2f} images/s; the "
          f"service / the engine alone: {worker_ratio:.2f}x; target ≥ 0.9x "
          + ("met" if worker_ratio >= 0.9 else "missed"))
    summary = {"layout": a.layout, "dtype": dtype, "images": a.images, "max_tiles": a.max_tiles,
               "new_tokens": a.new_tokens, "recipe_batch": a.recipe_batch, "service": svc, "recipe": rec,
               "ratio": ratio, "partial": partial, "worker_ratio": worker_ratio, "identical": same,
               "compared": len(common),
               "params": n_params, "reused": reused, "load_average": os.getloadavg()[0], **env}
    if a.results is not None:
        append_row(a.results, summary)
        log(f"results appended to {a.results}")
    if a.device == "cpu" and dtype == "float32" and same != len(common):
        raise SystemExit(f"answers differ between the service and the recipe in {len(common) - same} images")
    return summary


if __name__ == "__main__":
    main()
