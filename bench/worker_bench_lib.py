"""Helpers of bench/bench_worker_batching.py: model layouts and their checkpoints, the machine's
description, and the results file of its GPU runs (the batching worker against the
same worker with batching off, on the InternVL2-8B layout with random bf16 weights)."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.checkpoint_writer import INTERNVL2_8B, Dims, checkpoint_bytes, existing_checkpoint, write_model
from bench.gpu_results import write_results

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - _T0:6.1f}s] {msg}", flush=True)


@dataclass(frozen=True)
class Layout:
    dims: Dims
    file_dtype: torch.dtype  # as written; the worker casts to --dtype on load
    shard_bytes: int
    label: str


LAYOUTS = {
    # bench_engine_batch.py's model (the CPU figures of BENCHMARKS.md): the same weights as before
    "small": Layout(Dims(image_size=448, vit_hidden=64, vit_layers=2, vit_heads=4, vit_intermediate=256,
                         hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1536),
                    torch.float32, 4_000_000_000, "InternViT 64x2 + InternLM2 512x8"),
    # OpenGVLab/InternVL2-8B: InternViT-300M-448px + mlp1 + internlm2_5-7b-chat, 16 GB of bf16
    "8b": Layout(INTERNVL2_8B, torch.bfloat16, 4_000_000_000, "InternVL2-8B layout"),
    # the same path at toy sizes (tests), in small shards so it too goes through the index file
    "tiny": Layout(Dims(image_size=448, vit_hidden=64, vit_layers=2, vit_heads=4, vit_intermediate=256,
                        hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256),
                   torch.float32, 400_000, "InternViT 64x2 + InternLM2 128x2"),
}


def count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def prepare_checkpoint(name: str, folder: Path | None, device: str) -> tuple[Path, int, bool, float]:
    """(folder, parameters, reused, seconds spent writing): the layout's random-weight checkpoint
    in the original InternVL2 layout, reused when ``folder`` already holds one with the same
    settings (bench_gpu_engine.py writes the same 8B one: a warm machine keeps it)."""
    lay = LAYOUTS[name]
    folder = folder or Path(tempfile.gettempdir()) / f"captionq-bench-{name}"
    found = existing_checkpoint(folder, lay.dims, lay.file_dtype)
    if found is not None:
        log(f"checkpoint: reusing {folder} ({count(found)} parameters, written by an earlier run)")
        return folder, found, True, 0.0
    size = checkpoint_bytes(lay.dims, lay.file_dtype)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < size * 1.05:
        raise SystemExit(f"{folder}: {free / 1e9:.1f} GB free, the checkpoint needs {size / 1e9:.1f} GB")
    gen = device if device.startswith("cuda") else "cpu"  # drawn on the GPU: seconds for 8B
    log(f"checkpoint: writing {size / 1e9:.2f} GB ({lay.file_dtype}, drawn on {gen}) to {folder}; "
        f"estimated {size / (1e9 if gen != 'cpu' else 1e8):.0f} s")
    t0 = time.perf_counter()
    params = write_model(folder, lay.dims, dtype=lay.file_dtype, device=gen, shard_bytes=lay.shard_bytes,
                         log=log)
    if gen != "cpu":
        torch.cuda.empty_cache()  # the worker process needs the GPU's memory, not this one
    took = time.perf_counter() - t0
    log(f"checkpoint: {count(params)} parameters written in {took:.1f} s")
    return folder, params, False, took


def environment(device: str) -> dict[str, str]:
    import transformers

    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else \
        f"CPU {platform.machine()} x{os.cpu_count()}"
    return {"device_name": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


HEADER = """# Worker batching benchmark on a GPU

200 caption jobs through the whole service, the batching worker (`CAPTIONQ_BATCHING=true`, batches
of up to 16) against the same worker with batching off (one request at a time), on the
InternVL2-8B layout with random bf16 weights (`--layout 8b`: InternViT-300M-448px + mlp1 +
internlm2_5-7b-chat, 8.1B parameters, written in the original layout and converted on load).
Produced by `bench/bench_worker_batching.py`; a GPU machine runs it through
`bench/gpu_session_worker.sh` (see BENCHMARKS.md, GPU section). Each job: one kit image at
`max_tiles` 1 (256 image tokens), a distinct prompt, greedy, the given number of new tokens; one
`POST /v1/batches`, timed until every job has ended. "local" = the embedded mode (SQLite, kombu's
filesystem broker, `file://` media), "services" = PostgreSQL + Redis + S3. A rate marked
"(partial: N)" was measured on the first N jobs only (`--time-limit`) and the ratio uses it.
Identical answers: jobs whose text is the same in both modes (in bf16 a batch's kernels round
differently from a single request's, so some difference is expected on a GPU).
"""

COLUMNS = ["run", "device", "layout, dtype", "stack", "jobs x new tokens", "batching off jobs/s",
           "batching on jobs/s", "ratio", "identical answers", "torch / transformers"]


def _rate(m: dict[str, Any]) -> str:
    return f"{m['jobs_per_s']:.3f}" + (f" (partial: {m['done']})" if m["partial"] else "")


def row(s: dict[str, Any]) -> str:
    on, off = s["on"], s["off"]
    cells = [time.strftime("%Y-%m-%d %H:%M"), s["device_name"], f"{s['layout']}, {s['dtype']}", s["stack"],
             f"{s['jobs']} x {s['new_tokens']}", _rate(off), _rate(on),
             f"**{s['ratio']:.2f}x**" + (" (extrapolated)" if s["extrapolated"] else ""),
             f"{s['identical']}/{s['compared']}", f"{s['torch']} / {s['transformers']}"]
    return "| " + " | ".join(cells) + " |"


def append_row(path: Path, s: dict[str, Any]) -> None:
    """Rewrite ``path`` as the fixed header, the latest run's details and every dated row."""
    ckpt = "reused" if s["reused"] else f"written in {s['write_s']:.0f} s"
    latest = (f"Latest run: {s['device_name']}, Python {s['python']}; {count(s['params'])} parameters, "
              f"checkpoint {ckpt}; worker ready in {s['on']['ready_s']:.0f} s (batching on) / "
              f"{s['off']['ready_s']:.0f} s (off); {s['concurrency']} task threads; job run_seconds p50 "
              f"{s['on']['run_p50']:.2f} s on / {s['off']['run_p50']:.2f} s off.")
    write_results(path, HEADER, latest, COLUMNS, row(s))
