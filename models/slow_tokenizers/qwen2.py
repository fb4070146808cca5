"""``Qwen2Tokenizer`` (InternVL2-1B): NFC, regex pre-tokenizer, byte-level BPE."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import regex

from models.slow_tokenizers.base import SlowTokenizer

QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


class Qwen2Slow(SlowTokenizer):
    """``Qwen2Tokenizer``: NFC, regex pre-tokenizer, byte-level BPE from vocab.json + merges.txt
    (the merges as shipped: InternVL2-1B's file lacks the ``#`` merges, so ``#include`` splits)."""

    spaces_between_special_tokens = False

    def __init__(self, config: dict[str, Any], folder: Path) -> None:
        from tokenizers.models import BPE

        super().__init__(config, folder)
        self.encoder: dict[str, int] = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        self.decoder = {v: k for k, v in self.encoder.items()}
        # transformers skips every merges line starting with '#' (the version header included)
        merges = []
        for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                a, b = line.split()
                merges.append((a, b))
        self.bpe = BPE(self.encoder, merges)
        self.pattern = regex.compile(QWEN2_PATTERN)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.errors = str(config.get("errors") or "replace")
        self._cache: dict[str, list[str]] = {}
        self.finish_init()

    def prepare(self, text: str) -> str:
        return unicodedata.normalize("NFC", text)

    def _tokenize(self, text: str) -> list[str]:
        out: list[str] = []
        for word in self.pattern.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            pieces = self._cache.get(mapped)
            if pieces is None:
                pieces = [t.value for t in self.bpe.tokenize(mapped)]
                if len(self._cache) < 100_000:
                    self._cache[mapped] = pieces
            out.extend(pieces)
        return out

    def _piece_id(self, token: str) -> int | None:
        return self.encoder.get(token)

    def _id_piece(self, tid: int) -> str:
        return self.decoder.get(tid, "")

    def base_vocab_size(self) -> int:
        return len(self.encoder)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        data = bytearray(self.byte_decoder[c] for c in "".join(tokens) if c in self.byte_decoder)
        return data.decode("utf-8", errors=self.errors)
