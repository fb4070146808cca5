"""The checkpoint's own tokenizer, loaded from its data files only (no checkpoint code runs).

Backends, in order of preference:

- the official *slow* tokenizer of the family named by ``tokenizer_config.json``'s
  ``tokenizer_class`` (``Qwen2Tokenizer`` from vocab.json + merges.txt, ``InternLM2Tokenizer``
  and ``LlamaTokenizer`` from tokenizer.model), reproduced by :mod:`models.slow_tokenizers`:
  InternVL loads its tokenizers with ``use_fast=False``, and the fast ones differ (Phi-3's
  whitespace after added tokens, InternLM2's decoding);
- ``tokenizer.json`` through the ``tokenizers`` library (the conformance kit's toy tokenizers
  and other families): encoding applies the file's own post-processor, decoding is
  ``tokenizers``' ``decode``;
- any other ``tokenizer.model`` (sentencepiece): added tokens split out first, longest match
  first; every other span goes through sentencepiece; ``<s>`` is prepended when
  ``add_bos_token`` (default true).

Special ids (``<IMG_CONTEXT>``, ``<img>``, ``</img>``, the stop token) are looked up by string,
never assumed: :meth:`Tokenizer.token_id`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from models.errors import CheckpointCorrupt, CheckpointNotFound
from models.slow_tokenizers import SlowTokenizer, slow_family, token_str


class _Backend(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str: ...
    def token_id(self, token: str) -> int | None: ...
    def vocab_size(self) -> int: ...


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointCorrupt(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


_token_str = token_str


class _FastBackend:
    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as RawTokenizer

        try:
            self.tok = RawTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise CheckpointCorrupt(f"cannot load {path}: {exc}") from exc

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size(with_added_tokens=True))


class _SentencePieceBackend:
    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        import sentencepiece as spm

        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except Exception as exc:
            raise CheckpointCorrupt(f"cannot load {path}: {exc}") from exc
        self.added: dict[str, int] = {}
        self.special_ids: set[int] = set()
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            content = _token_str(entry)
            if content is None:
                continue
            self.added[content] = int(key)
            if not isinstance(entry, dict) or entry.get("special", True):
                self.special_ids.add(int(key))
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            tok = _token_str(config.get(name))
            tid = self.token_id(tok) if tok else None
            if tid is not None:
                self.special_ids.add(tid)
        self.id_to_added = {v: k for k, v in self.added.items()}
        # longest first so that e.g. "<|im_end|>" wins over a shorter prefix token
        self._added_sorted = sorted(self.added, key=len, reverse=True)
        self.add_bos = bool(config.get("add_bos_token", True))
        self.add_eos = bool(config.get("add_eos_token", False))

    def _split(self, text: str) -> list[tuple[str, int | None]]:
        out: list[tuple[str, int | None]] = []
        start = i = 0
        while i < len(text):
            match = next((t for t in self._added_sorted if text.startswith(t, i)), None)
            if match is None:
                i += 1
                continue
            if start < i:
                out.append((text[start:i], None))
            out.append((match, self.added[match]))
            i += len(match)
            start = i
        if start < len(text):
            out.append((text[start:], None))
        return out

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        add = add_special_tokens
        ids: list[int] = [self.sp.bos_id()] if add and self.add_bos and self.sp.bos_id() >= 0 else []
        for piece, tid in self._split(text):
            ids.extend([tid] if tid is not None else self.sp.encode(piece))
        if add and self.add_eos and self.sp.eos_id() >= 0:
            ids.append(self.sp.eos_id())
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        parts: list[str] = []
        run: list[int] = []
        for tid in ids:
            tid = int(tid)
            if skip_special_tokens and tid in self.special_ids:
                continue
            if tid in self.id_to_added or tid in self.special_ids:
                if run:
                    parts.append(self.sp.decode(run))
                    run = []
                parts.append(self.id_to_added.get(tid) or self.sp.id_to_piece(tid))
            else:
                run.append(tid)
        if run:
            parts.append(self.sp.decode(run))
        return "".join(parts)

    def token_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        tid = int(self.sp.piece_to_id(token))
        return tid if self.sp.id_to_piece(tid) == token else None

    def vocab_size(self) -> int:
        return max([int(self.sp.get_piece_size()) - 1, *self.added.values()]) + 1


class _SlowBackend:
    """Adapter from :class:`models.slow_tokenizers.SlowTokenizer` to the backend protocol."""

    def __init__(self, family: type[SlowTokenizer], config: dict[str, Any], folder: Path) -> None:
        try:
            self.slow = family(config, folder)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointCorrupt(f"cannot load the tokenizer in {folder}: {exc}") from exc
        self.cleans_up = self.slow.cleans_up

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.slow.encode(text, add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        return self.slow.decode(ids, skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        if token in self.slow.added:
            return self.slow.added[token]
        return self.slow._piece_id(token)

    def vocab_size(self) -> int:
        return self.slow.vocab_size()


class Tokenizer:
    """The engine's tokenizer. ``encode`` adds what the checkpoint's tokenizer adds (BOS for
    InternLM2, nothing for Qwen2 and this Phi-3 config); ``decode`` follows the official slow
    tokenizer's rules (:mod:`models.slow_tokenizers`)."""

    def __init__(self, backend: _Backend, config: dict[str, Any], folder: Path, *,
                 require_image_tokens: bool = True) -> None:
        self._b = backend
        self.folder = folder
        self.config = config
        # a text-only folder (an LLM's own tokenizer) has no InternVL image tokens: -1 never
        # matches an id, and the engine always loads with require_image_tokens=True
        find = self._required if require_image_tokens else self._optional
        self.img_context_id = find("<IMG_CONTEXT>")
        self.img_start_id = find("<img>")
        self.img_end_id = find("</img>")
        self.bos_id = self._named_id("bos_token")
        self.eos_id = self._named_id("eos_token")
        # batch_chat pads with the tokenizer's pad token; only attention-masked positions get it
        pad = self._named_id("pad_token")
        if pad is None:
            pad = self.eos_id if self.eos_id is not None else 0
        self.pad_id: int = pad

    @classmethod
    def load(cls, folder: str | Path, *, require_image_tokens: bool = True) -> Tokenizer:
        folder = Path(folder)
        config = _read(folder / "tokenizer_config.json")
        special_map = _read(folder / "special_tokens_map.json")
        for key, value in special_map.items():
            config.setdefault(key, value)
        backend: _Backend
        family = slow_family(config, folder)
        if family is not None:
            backend = _SlowBackend(family, config, folder)
        elif (folder / "tokenizer.json").is_file():
            backend = _FastBackend(folder / "tokenizer.json")
        elif (folder / "tokenizer.model").is_file():
            backend = _SentencePieceBackend(folder / "tokenizer.model", config)
        else:
            raise CheckpointNotFound(
                f"{folder} has no tokenizer: expected tokenizer.json, tokenizer.model, or "
                "vocab.json + merges.txt with a Qwen2Tokenizer tokenizer_config.json")
        return cls(backend, config, folder, require_image_tokens=require_image_tokens)

    def _required(self, token: str) -> int:
        tid = self._b.token_id(token)
        if tid is None:
            raise CheckpointCorrupt(f"tokenizer in {self.folder} has no {token!r} token")
        return tid

    def _optional(self, token: str) -> int:
        tid = self._b.token_id(token)
        return -1 if tid is None else tid

    def _named_id(self, name: str) -> int | None:
        tok = _token_str(self.config.get(name))
        return self._b.token_id(tok) if tok else None

    def token_id(self, token: str) -> int | None:
        """``convert_tokens_to_ids`` for one token string (None when unknown)."""
        return self._b.token_id(token)

    def stop_id(self, stop_str: str) -> int:
        """The id chat() stops at: the template's ``sep.strip()`` as one token (QUIRKS 6)."""
        tid = self._b.token_id(stop_str)
        if tid is None:
            raise CheckpointCorrupt(f"tokenizer in {self.folder} has no stop token {stop_str!r}")
        return tid

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``tokenizer(text)["input_ids"]`` of the official tokenizer."""
        return self._b.encode(text, add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """``tokenizer.decode(ids, skip_special_tokens=...)`` of the official tokenizer."""
        return self._b.decode(ids, skip_special_tokens)

    @property
    def backend(self) -> str:
        """Which implementation reproduces this tokenizer (for reports)."""
        b = self._b
        return type(b.slow).__name__ if isinstance(b, _SlowBackend) else type(b).__name__.strip("_")

    @property
    def base_vocab_size(self) -> int | None:
        """The model vocabulary without added tokens (``tokenizer.vocab_size``; slow families)."""
        b = self._b
        return b.slow.base_vocab_size() if isinstance(b, _SlowBackend) else None

    @property
    def cleans_up_spaces(self) -> bool:
        """Whether decoding removes a space before punctuation (InternLM2): then the end of a
        decoded prefix can still change when more ids follow (see models.text_stream)."""
        return bool(getattr(self._b, "cleans_up", False))

    @property
    def vocab_size(self) -> int:
        return self._b.vocab_size()
