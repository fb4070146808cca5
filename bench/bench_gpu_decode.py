"""Decoding-step speed and continuous batching on one GPU, InternVL2-8B layout, random weights.

    python bench/bench_gpu_decode.py [--layout 8b|tiny] [--device cuda] [--rows 1,16,32,64]
        [--context 1700] [--steps 30] [--images 256] [--max-tiles 6] [--new-tokens 128]
        [--slots 64] [--workdir DIR] [--results FILE] [--deadline S]

Two parts, each side by side in the same process:

1. **ms per decoding step** at each ``--rows``, every row holding ``--context`` positions (a
   6-tile caption: 1536 image tokens + prompt + answer), for
   - ``static``: the static path's step (the model's ``forward`` over a transformers cache,
     as ``models.generation.generate`` runs it),
   - ``slots eager``: :class:`models.decode_step.DecodeStep` without graphs,
   - ``slots graph``: the same step replayed as a CUDA graph,
   against two floors over the card's copy bandwidth measured in this run (device-to-device,
   bytes read + written): the LLM's weights without the embedding table, and those plus every
   row's keys and values (what a step must read at this context).
2. **images/s of the engine**: ``--images`` requests (random tiles, a distinct question each,
   ``--new-tokens`` greedy tokens), all submitted at once, through the static
   :class:`models.batcher.Batcher` and the :class:`models.continuous.ContinuousBatcher` with the
   same slot count and KV budget; the ratio, and how many answers are identical.

``--deadline`` (seconds from start) skips what would not finish in time and says so. On the CPU
(``--layout tiny --device cpu``) the same code runs at toy sizes (graphs off): the dry run of
``bench/gpu_session_decode.sh``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.worker_bench_lib import LAYOUTS, log, prepare_checkpoint  # noqa: E402
from models.batcher import Batcher  # noqa: E402
from models.continuous import ContinuousBatcher  # noqa: E402
from models.decode_step import DecodeStep  # noqa: E402
from models.engine import ChatRequest, Engine  # noqa: E402
from models.generation import GenerationParams  # noqa: E402
from models.kv_cache import reserved_cache  # noqa: E402
from models.slots import SlotKV, kv_bytes_per_token  # noqa: E402

_T0 = time.perf_counter()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def copy_bandwidth(device: str) -> float | None:
    """Bytes/s of a device-to-device copy (read + written), best of 5; None on the CPU."""
    if not device.startswith("cuda"):
        return None
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t0)
    del src, dst
    return 2 * 2**30 / best


def llm_step_bytes(engine: Engine) -> int:
    """Weight bytes one decoding step reads: the LLM and its head, not the embedding table (a
    step reads one row of it per sequence) nor the ViT."""
    lm = engine.model.model.language_model
    params = sum(p.numel() * p.element_size() for n, p in lm.named_parameters() if "embed_tokens" not in n)
    head = engine.model.lm_head.weight
    return params + head.numel() * head.element_size()


def time_steps(fn: Any, steps: int) -> float:
    """Median ms of ``fn()`` over ``steps`` calls after 3 warm-ups (device-synchronised)."""
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


@torch.inference_mode()
def static_step_ms(engine: Engine, rows: int, context: int, steps: int) -> float:
    """The static path's decoding step: ``model.forward`` of one token per row over a
    reserved transformers cache already holding ``context`` positions."""
    model = engine.model
    dev = model.get_input_embeddings().weight.device
    cache = reserved_cache(model.config.get_text_config(), context + steps + 8)
    ids = torch.randint(0, min(1000, engine.info.vocab_size), (rows, context), device=dev)
    mask = torch.ones(rows, context, dtype=torch.long, device=dev)
    model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
    state = {"mask": mask, "pos": torch.full((rows, 1), context, device=dev)}
    step_ids = torch.zeros(rows, 1, dtype=torch.long, device=dev)

    def one() -> None:
        state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(rows, 1)], dim=-1)
        out = model(input_ids=step_ids, attention_mask=state["mask"], position_ids=state["pos"],
                    cache=cache, use_cache=True, logits_to_keep=1)
        out.logits[:, -1, :].float().argmax(-1).tolist()
        state["pos"] = state["pos"] + 1

    return time_steps(one, steps)


def slot_step_ms(step: DecodeStep, rows: int, context: int, steps: int) -> float:
    tokens, positions = [0] * rows, [context] * rows

    def one() -> None:
        step(tokens, positions, context + 1).argmax(-1).tolist()

    return time_steps(one, steps)


def requests(n: int, tiles: int, new_tokens: int, image_size: int) -> list[ChatRequest]:
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(tiles, 3, image_size, image_size, generator=gen)
    params = GenerationParams(max_new_tokens=new_tokens)
    return [ChatRequest(f"Describe picture {i} in detail.", pixel_values=pixels, params=params)
            for i in range(n)]


def run_batcher(batcher: Batcher, reqs: list[ChatRequest], label: str) -> tuple[float, list[list[int]]]:
    with batcher:
        sync()
        t0 = time.perf_counter()
        futures = [batcher.submit(r) for r in reqs]
        out = [f.result().output_ids for f in futures]
        sync()
        took = time.perf_counter() - t0
    s = batcher.stats
    log(f"  {label}: {len(reqs)} images in {took:.2f} s = {len(reqs) / took:.2f} images/s "
        f"({s.decode_steps} steps, largest batch {s.largest_batch}, model busy {s.busy_seconds:.1f} s"
        + (f", of which joining prompts {s.prefill_seconds:.1f} s" if s.prefill_seconds else "") + ")")
    return took, out


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", default="1,16,32,64")
    ap.add_argument("--context", type=int, default=1700)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--max-tiles", type=int, default=6, help="tiles per image (+1 thumbnail)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=None, help="append the printed table here")
    ap.add_argument("--deadline", type=float, default=None, help="seconds from start to end by")
    return ap.parse_args(argv)


def left(a: argparse.Namespace) -> float:
    return float("inf") if a.deadline is None else a.deadline - (time.perf_counter() - _T0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    dtype = "bfloat16" if a.device.startswith("cuda") else "float32"
    folder, _params, _reused, _ = prepare_checkpoint(a.layout, a.workdir, a.device)
    engine = Engine.load(folder, device=a.device, dtype=dtype)
    log(f"loaded {a.layout} on {a.device} as {dtype}, {engine.info.attn_implementation} attention")
    bw = copy_bandwidth(a.device)
    weights = llm_step_bytes(engine)
    per_token = kv_bytes_per_token(engine.model.config.get_text_config(), engine.model.dtype)
    lines = [f"bandwidth {bw / 1e12:.2f} TB/s (copy)" if bw else "bandwidth: not measured (CPU)",
             f"LLM weights read per step {weights / 1e9:.2f} GB, KV {per_token / 1024:.0f} KiB per position"]
    summary: dict[str, Any] = {"steps": {}}
    rows_list = [int(x) for x in a.rows.split(",")]
    capacity = (a.context + a.steps + 16 + 63) // 64 * 64  # aligned, as slot_capacity makes it
    kv = SlotKV(engine.model.config.get_text_config(), slots=max(rows_list), capacity=capacity,
                dtype=engine.model.dtype, device=engine.model.get_input_embeddings().weight.device)
    eager = DecodeStep(engine.model, kv, graphs=False)
    graph = DecodeStep(engine.model, kv, graphs=a.device.startswith("cuda"))
    lines.append("| rows | weights floor ms | weights + KV floor ms | static ms | slots eager ms "
                 "| slots graph ms | graph / weights floor | graph / weights + KV floor | static / graph |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for rows in rows_list:
        if left(a) < 60:
            lines.append(f"| {rows} | skipped: deadline |")
            continue
        wfloor = weights / bw * 1000 if bw else float("nan")
        floor = (weights + rows * (a.context + 1) * per_token) / bw * 1000 if bw else float("nan")
        st = static_step_ms(engine, rows, a.context, a.steps)
        ea = slot_step_ms(eager, rows, a.context, a.steps)
        gr = slot_step_ms(graph, rows, a.context, a.steps) if graph.use_graphs else float("nan")
        summary["steps"][rows] = {"floor": floor, "static": st, "eager": ea, "graph": gr}
        lines.append(f"| {rows} | {wfloor:.2f} | {floor:.2f} | {st:.2f} | {ea:.2f} | {gr:.2f} | "
                     f"{gr / wfloor:.2f} | {gr / floor:.2f} | {st / gr:.2f} |")
        log(lines[-1])
    summary["graphs"] = graph.use_graphs
    del eager, graph, kv
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    image_size = engine.spec.image_size
    reqs = requests(a.images, a.max_tiles + (1 if a.max_tiles > 1 else 0), a.new_tokens, image_size)
    prompt = engine.prepare(reqs[0]).prompt_tokens
    budget = a.slots * (prompt + a.new_tokens + 16)
    if left(a) > 90:
        static = Batcher(engine, max_requests=a.slots, max_tokens=budget, wait_ms=20)
        t_static, out_static = run_batcher(static, reqs, "static batches")
        t_cont, out_cont = run_batcher(ContinuousBatcher(engine, max_requests=a.slots, max_tokens=budget),
                                       reqs, "continuous")
        same = sum(x == y for x, y in zip(out_static, out_cont, strict=True))
        summary.update(static_ips=a.images / t_static, continuous_ips=a.images / t_cont, identical=same)
        tiles = 0 if reqs[0].pixel_values is None else reqs[0].pixel_values.shape[0]
        lines.append(f"engine, {a.images} images x {tiles} tiles ({prompt} prompt tokens) x {a.new_tokens} "
                     f"tokens, {a.slots} slots: static {a.images / t_static:.2f} images/s, continuous "
                     f"{a.images / t_cont:.2f} images/s, ratio {t_static / t_cont:.2f}x; "
                     f"identical answers {same}/{a.images}")
    else:
        lines.append("engine images/s: skipped (deadline)")
    text = "\n".join(lines)
    print(text, flush=True)
    if a.results:
        with a.results.open("a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {a.layout} on "
                    f"{torch.cuda.get_device_name() if a.device.startswith('cuda') else 'cpu'}\n\n{text}\n")
    return summary


if __name__ == "__main__":
    main()
