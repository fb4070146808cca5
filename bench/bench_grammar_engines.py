"""Compare grammar engines on this machine: tokenizer set-up, grammar compile and the time to
compute one token mask per decoding step, for one JSON schema, with the checkpoint tokenizers of
the conformance kit (byte-level BPE Qwen2, 151k ids; sentencepiece InternLM2, 92k ids).

    python bench/bench_grammar_engines.py [--engines llguidance,xgrammar,outlines_core]

Each engine walks the same valid document token by token (the tokenizer's own encoding of it),
computing the mask before each token, as a decoding loop would. Engines that are not installed
are skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.grammar_vocab import TokenBytes, token_bytes
from models.tokenizer import Tokenizer

Setup = tuple[float, float, Callable[[int], Any], Callable[[], Any]]
KIT = Path(__file__).resolve().parents[1] / "tests/data/conformance/tokenizers"
SCHEMA = {
    "type": "object",
    "properties": {
        "caption": {"type": "string"},
        "objects": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 8},
        "count": {"type": "integer", "minimum": 0},
        "nsfw": {"type": "boolean"},
        "scene": {"enum": ["indoor", "outdoor", "unknown"]},
    },
    "required": ["caption", "objects", "count", "nsfw", "scene"],
    "additionalProperties": False,
}
DOC = ('{"caption": "A brown dog runs across a grassy park while two children watch", "objects": '
       '["dog", "child", "child", "tree"], "count": 4, "nsfw": false, "scene": "outdoor"}')


def _llguidance(tok: Tokenizer, tb: TokenBytes, stop: int) -> Setup:
    import llguidance
    import llguidance.numpy as lnp

    class _Wrap:
        eos_token_id = stop
        bos_token_id = None
        tokens = tb.pieces
        special_token_ids = sorted(tb.special)

        def __call__(self, s: str) -> list[int]:
            return tok.encode(s, add_special_tokens=False)

    t0 = time.perf_counter()
    lltok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Wrap()))
    t1 = time.perf_counter()
    m = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(SCHEMA))
    t2 = time.perf_counter()
    mask = lnp.allocate_token_bitmask(1, len(tb.pieces))
    return t1 - t0, t2 - t1, m.consume_token, lambda: lnp.fill_next_token_bitmask(m, mask)


def _xgrammar(tok: Tokenizer, tb: TokenBytes, stop: int) -> Setup:
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo(tb.pieces, vocab_type=xgr.VocabType.RAW, vocab_size=len(tb.pieces),
                             stop_token_ids=[stop], add_prefix_space=False)
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    t1 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=True)
    m = xgr.GrammarMatcher(compiled)
    t2 = time.perf_counter()
    mask = xgr.allocate_token_bitmask(1, len(tb.pieces))
    return t1 - t0, t2 - t1, m.accept_token, lambda: m.fill_next_token_bitmask(mask)


def _outlines_core(tok: Tokenizer, tb: TokenBytes, stop: int) -> Setup:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    vocab: dict[bytes, list[int]] = {}
    for tid, piece in enumerate(tb.pieces):
        if piece and tid != stop:
            vocab.setdefault(piece, []).append(tid)
    voc = Vocabulary(stop, vocab)
    t1 = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(SCHEMA)), voc)
    guide = Guide(index)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, guide.advance, guide.get_tokens


ENGINES = {"llguidance": _llguidance, "xgrammar": _xgrammar, "outlines_core": _outlines_core}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default=",".join(ENGINES))
    args = ap.parse_args()
    for name in ("internvl2-1b-qwen2", "internvl2-2b-internlm2"):
        tok = Tokenizer.load(KIT / name)
        tb = token_bytes(tok)
        stop = tok.stop_id("<|im_end|>")
        ids = tok.encode(DOC, add_special_tokens=False)
        for engine in args.engines.split(","):
            try:
                setup, compile_s, consume, mask = ENGINES[engine](tok, tb, stop)
            except ImportError as exc:
                print(f"{name:24s} {engine:14s} skipped: {exc}")
                continue
            steps = []
            for t in ids:
                s = time.perf_counter()
                mask()
                steps.append(time.perf_counter() - s)
                consume(t)
            p90 = sorted(steps)[int(0.9 * len(steps))]
            print(f"{name:24s} {engine:14s} vocab {len(tb.pieces):6d}  "
                  f"tokenizer set-up {setup * 1e3:7.0f} ms  compile {compile_s * 1e3:7.1f} ms  "
                  f"mask/step mean {statistics.mean(steps) * 1e6:7.0f} us  p90 {p90 * 1e6:7.0f} us  "
                  f"max {max(steps) * 1e6:7.0f} us  ({len(ids)} steps)")


if __name__ == "__main__":
    main()
