"""The Markdown file of bench_gpu_engine.py: a fixed explanation, the latest run's details, and
one dated row per run (rows are kept across runs, like bench_preprocess.py's, so that runs on
different cards or with different sizes stay side by side)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

HEADER = """# GPU engine benchmark

Batched engine throughput vs a one-at-a-time loop in the style of the model card's `chat()`, on
the InternVL2-8B layout with random bf16 weights (`--layout 8b`: InternViT-300M-448px + mlp1 +
internlm2_5-7b-chat, 8.1B parameters, written in the original layout and converted on load).
Produced by `bench/bench_gpu_engine.py`; a GPU machine runs it through `bench/gpu_session.sh`
(see BENCHMARKS.md). "Batched" = every request submitted to `models.batcher.Batcher` with the
worker's settings (16 requests, 32768 tokens, 20 ms); "one at a time" = `engine.chat()` per
image (its vision pass, then its generation alone). Inputs: the conformance kit's 12 images
cycled, `load_image(max_num=max tiles)`, a distinct question each, greedy. A one-at-a-time rate
marked "(partial)" was measured on the first images only (`--time-limit`), the rest extrapolated.
Identical ids: requests whose greedy token ids are the same in both modes (on a GPU in bf16 the
batch's kernels round differently from a single request's, so some difference is expected).
"""

COLUMNS = ["run", "device", "layout, dtype, attention", "images (tiles), new tokens",
           "one at a time img/s", "batched img/s", "ratio", "tokens/s one / batched",
           "peak GPU GiB one / batched", "identical ids", "torch / transformers"]


def row(s: dict[str, Any]) -> str:
    seq = f"{s['seq_ips']:.3f}" + (f" (partial: {s['seq_images']})" if s["extrapolated"] else "")
    cells = [time.strftime("%Y-%m-%d %H:%M"), s["device_name"], f"{s['layout']}, {s['dtype']}, {s['attn']}",
             f"{s['images']} ({s['tiles']}, max {s['max_tiles']}), {s['new_tokens']}", seq,
             f"{s['bat_ips']:.3f}", f"**{s['ratio']:.2f}x**", f"{s['seq_tps']:.0f} / {s['bat_tps']:.0f}",
             f"{s['peak_seq_gib']:.1f} / {s['peak_bat_gib']:.1f}", f"{s['identical']}/{s['compared']}",
             f"{s['torch']} / {s['transformers']}"]
    return "| " + " | ".join(cells) + " |"


def write_results(path: Path, header: str, latest: str, columns: list[str], new_row: str) -> None:
    """Rewrite ``path`` as ``header``, the latest run's details and every dated row so far plus
    ``new_row`` (rows are the lines starting with "| 20")."""
    old = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    history = [ln for ln in old if ln.startswith("| 20")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([
        header, latest, "", "## All runs", "",
        "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns),
        *history, new_row, "",
    ]), encoding="utf-8")


def append_row(path: Path, s: dict[str, Any]) -> None:
    ckpt = "reused" if s["reused"] else f"written in {s['write_s']:.0f} s"
    latest = (f"Latest run: {s['device_name']}, Python {s['python']}; checkpoint {ckpt}, loaded in "
              f"{s['load_s']:.0f} s; ~{s['prompt_tokens']:.0f} prompt tokens per request on average; "
              f"batched: {s['batches']}; mean shared token prefix between the modes {s['prefix']:.1%}.")
    write_results(path, HEADER, latest, COLUMNS, row(s))
