"""Decode throughput with grammar constraints against without: batch 16, CPU.

    python bench/bench_constrained.py [--requests 16] [--new-tokens 48] [--hidden 512] ...

Writes a random-weight InternVL2 checkpoint (InternLM2 layout, see bench/checkpoint_writer.py)
whose vocabulary is a real one: the kit's InternVL2-1B Qwen2 tokenizer (151,655 ids), so the
grammar engine's mask costs what it costs with a real checkpoint. Then, on the engine:

- free: 16 text-only requests, greedy, ``--new-tokens`` each (the random model never emits the
  stop token, so every row runs to the end);
- constrained: the same 16 requests with a JSON-schema response_format whose ``caption`` string
  is unbounded, so every row also runs to ``--new-tokens`` (equal token counts in both modes).

Decode tokens/s = 16 x (new_tokens - 1) / (time(new_tokens) - time(1 token)): the prefill is
subtracted. Mask overhead per step: the grammar engine's compute time for all rows of a step (on
its background thread, overlapping the forward pass), the time the decoding loop actually waited
for masks, and the time to apply them to the logits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_engine_batch import on_own_thread  # noqa: E402
from bench.checkpoint_writer import SUBJECTS, Dims, write_model  # noqa: E402
from jobs.formats import grammar_for  # noqa: E402
from models import constrained, generation  # noqa: E402
from models.engine import ChatRequest, Engine  # noqa: E402
from models.generation import GenerationParams  # noqa: E402

TOKENIZER = ROOT / "tests/data/conformance/tokenizers/internvl2-1b-qwen2"
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["caption", "objects", "nsfw"],
          "properties": {"caption": {"type": "string"},
                         "objects": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
                         "nsfw": {"type": "boolean"}}}


def write_checkpoint(folder: Path, a: argparse.Namespace) -> None:
    dims = Dims(image_size=224, vit_hidden=64, vit_layers=1, vit_heads=4, vit_intermediate=256,
                hidden=a.hidden, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads,
                intermediate=a.intermediate, vocab_size=151655)
    write_model(folder, dims, dtype=torch.float32)
    for old in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / old).unlink(missing_ok=True)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, folder / f.name)


class Probe:
    """Counts the grammar work of one run (constraint objects and apply_constraints calls)."""

    def __init__(self) -> None:
        self.constraints: list[constrained.GrammarConstraint] = []
        self.apply_seconds = 0.0
        self.steps = 0

    def install(self) -> None:
        made, apply = constrained.GrammarConstraint.__init__, generation.apply_constraints
        probe = self

        def init(obj: constrained.GrammarConstraint, *args: Any, **kw: Any) -> None:
            made(obj, *args, **kw)
            probe.constraints.append(obj)

        def timed(logits: torch.Tensor, rows: list[generation.Row]) -> None:
            t0 = time.perf_counter()
            apply(logits, rows)
            if any(r.constraint is not None for r in rows):
                probe.apply_seconds += time.perf_counter() - t0
                probe.steps += 1

        constrained.GrammarConstraint.__init__ = init  # type: ignore[method-assign]
        generation.apply_constraints = timed


def requests(n: int, new_tokens: int, grammar: str | None) -> list[ChatRequest]:
    return [ChatRequest(f"Describe {SUBJECTS[i % len(SUBJECTS)]} as JSON ({i}).", params=GenerationParams(
        max_new_tokens=new_tokens, grammar=grammar, json_output=grammar is not None)) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    grammar = grammar_for({"type": "json_schema", "json_schema": SCHEMA})
    probe = Probe()
    probe.install()

    tmp = tempfile.TemporaryDirectory()  # kept: the grammar's token table is read on first use

    def load() -> Engine:
        write_checkpoint(Path(tmp.name), a)
        return Engine.load(tmp.name, device="cpu", dtype="float32")

    engine = on_own_thread(load)
    n = a.requests
    on_own_thread(lambda: engine.generate_batch(requests(n, 4, grammar)))  # warm-up, builds the vocabulary
    times: dict[str, list[float]] = {"free": [], "constrained": []}
    tokens: dict[str, int] = {}
    for _ in range(a.repeat):  # alternate, so that a noisy neighbour hits both modes alike
        for mode, g in (("free", None), ("constrained", grammar)):
            t0 = time.perf_counter()
            on_own_thread(lambda g=g: engine.generate_batch(requests(n, 1, g)))  # type: ignore[misc]
            prefill = time.perf_counter() - t0
            if mode == "constrained":
                probe.constraints.clear()
                probe.apply_seconds, probe.steps = 0.0, 0
            t0 = time.perf_counter()
            res = on_own_thread(lambda g=g: engine.generate_batch(requests(n, a.new_tokens, g)))  # type: ignore[misc]
            full = time.perf_counter() - t0
            tokens[mode] = sum(r.output_tokens for r in res)
            times[mode].append((tokens[mode] - n) / max(full - prefill, 1e-9))
    free, cons = statistics.median(times["free"]), statistics.median(times["constrained"])
    steps = max(probe.steps, 1)
    mask_ms = sum(c.mask_seconds for c in probe.constraints) / steps * 1e3
    wait_ms = sum(c.wait_seconds for c in probe.constraints) / steps * 1e3
    apply_ms = probe.apply_seconds / steps * 1e3
    print(f"model: random InternLM2(hidden {a.hidden}, {a.layers} layers, {a.heads}/{a.kv_heads} heads, "
          f"ffn {a.intermediate}) + Qwen2 tokenizer vocab {engine.info.vocab_size}; float32, "
          f"{torch.get_num_threads()} torch threads")
    print(f"batch {n} x {a.new_tokens} new tokens (greedy); tokens generated: free {tokens['free']}, "
          f"constrained {tokens['constrained']}")
    print(f"decode tokens/s (median of {a.repeat}): free {free:.1f}, constrained {cons:.1f}, "
          f"ratio {cons / free:.2f}x")
    print(f"mask overhead per step (all {n} rows, last constrained run): grammar compute {mask_ms:.2f} ms "
          f"(background thread), loop waited {wait_ms:.2f} ms, apply to logits {apply_ms:.2f} ms; "
          f"step time free {n / free * 1e3:.1f} ms")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    tmp.cleanup()


if __name__ == "__main__":
    main()
