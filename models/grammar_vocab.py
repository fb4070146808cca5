"""The bytes each token id stands for, as a grammar engine needs them to build token masks.

A grammar engine matches *bytes*; our tokenizers hand out *strings*. This module reads the
checkpoint's tokenizer files (the same ones :class:`models.tokenizer.Tokenizer` loaded, in the
same order of preference) and returns, for every id, the raw bytes of its piece:

- byte-level BPE (Qwen2's vocab.json, a tokenizer.json with a ``ByteLevel`` decoder, the
  InternLM2/Qwen2-style toy tokenizers of the test kit): the GPT-2 byte-to-unicode alphabet
  mapped back to bytes;
- sentencepiece (InternLM2's and Phi-3's tokenizer.model, a tokenizer.json with a
  ``ByteFallback`` decoder): ``▁`` is a space and ``<0xNN>`` the single byte NN.

Added tokens (``<|im_end|>``, ``<img>``, ...) and sentencepiece control pieces are *special*:
they get no bytes and a grammar can never produce them; the template's stop token is passed to
the grammar engine as its end-of-sequence token instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from models.slow_tokenizers import slow_family, token_str
from models.slow_tokenizers.qwen2 import bytes_to_unicode
from models.tokenizer import Tokenizer

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass(frozen=True)
class TokenBytes:
    """``pieces[i]``: the bytes of id i (b"" for special ids, listed in ``special``)."""

    pieces: list[bytes]
    special: frozenset[int]
    family: str  # "byte_level" or "sentencepiece" (for reports)


def _byte_level(vocab: dict[str, int], size: int) -> list[bytes]:
    decoder = {ch: b for b, ch in bytes_to_unicode().items()}
    pieces = [b""] * size
    for piece, tid in vocab.items():
        if 0 <= tid < size and all(ch in decoder for ch in piece):
            pieces[tid] = bytes(decoder[ch] for ch in piece)
    return pieces


def _sentencepiece_piece(piece: str) -> bytes:
    m = _BYTE_PIECE.match(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def _added_ids(folder: Path, config: dict[str, object]) -> dict[int, str]:
    added: dict[int, str] = {}
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        for key, entry in decoder.items():
            content = token_str(entry)
            if content is not None:
                added[int(key)] = content
    extra = folder / "added_tokens.json"
    if extra.is_file():
        for content, tid in json.loads(extra.read_text(encoding="utf-8")).items():
            added.setdefault(int(tid), content)
    return added


def token_bytes(tokenizer: Tokenizer) -> TokenBytes:
    """The byte table of ``tokenizer`` (one entry per id up to its ``vocab_size``)."""
    folder, config = tokenizer.folder, tokenizer.config
    size = tokenizer.vocab_size
    special: set[int] = set()
    family = slow_family(config, folder)
    tok_json = folder / "tokenizer.json"
    byte_level_files = (folder / "vocab.json").is_file() and not (folder / "tokenizer.model").is_file()
    if family is not None and byte_level_files:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        pieces, kind = _byte_level(vocab, size), "byte_level"
    elif family is None and tok_json.is_file():
        data = json.loads(tok_json.read_text(encoding="utf-8"))
        model_vocab = data["model"]["vocab"]
        vocab = model_vocab if isinstance(model_vocab, dict) else {p[0]: i for i, p in enumerate(model_vocab)}
        if "ByteLevel" in json.dumps(data.get("decoder")):
            pieces, kind = _byte_level(vocab, size), "byte_level"
        else:
            pieces, kind = [b""] * size, "sentencepiece"
            for piece, tid in vocab.items():
                if 0 <= tid < size:
                    pieces[tid] = _sentencepiece_piece(piece)
        for entry in data.get("added_tokens") or []:
            special.add(int(entry["id"]))
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        pieces, kind = [b""] * size, "sentencepiece"
        for tid in range(min(size, int(sp.get_piece_size()))):
            if sp.is_control(tid) or sp.is_unknown(tid):
                special.add(tid)
            else:
                pieces[tid] = _sentencepiece_piece(str(sp.id_to_piece(tid)))
    special |= set(_added_ids(folder, config))
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        tok = token_str(config.get(name))
        tid = tokenizer.token_id(tok) if tok else None
        if tid is not None:
            special.add(tid)
    special = {t for t in special if 0 <= t < size}
    special |= {t for t in range(size) if not pieces[t]}
    for t in special:
        pieces[t] = b""
    return TokenBytes(pieces=pieces, special=frozenset(special), family=kind)


__all__ = ["TokenBytes", "token_bytes"]
