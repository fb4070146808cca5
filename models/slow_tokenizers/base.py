"""Shared rules of transformers' slow ``PreTrainedTokenizer`` (see the package docstring)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import regex

SPIECE_UNDERLINE = "▁"
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def token_str(value: Any) -> str | None:
    """Special tokens are plain strings or AddedToken-like dicts ({"content": ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: spaces before punctuation and contractions."""
    return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


class SlowTokenizer:
    """Port of ``PreTrainedTokenizer``'s tokenize / encode / decode around a family's model."""

    add_bos = False
    add_eos = False
    spaces_between_special_tokens = True
    #: whether decoded text may still change at its end when more ids follow (clean-up rules)
    cleans_up = False

    def __init__(self, config: dict[str, Any], folder: Path) -> None:
        self.config = config
        self.added: dict[str, int] = {}
        self.rstrip: set[str] = set()
        self.lstrip: set[str] = set()
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            content = token_str(entry)
            if content is None:
                continue
            self.added[content] = int(key)
            if isinstance(entry, dict):
                if entry.get("rstrip"):
                    self.rstrip.add(content)
                if entry.get("lstrip"):
                    self.lstrip.add(content)
        extra = folder / "added_tokens.json"
        if extra.is_file():
            for content, tid in json.loads(extra.read_text(encoding="utf-8")).items():
                self.added.setdefault(content, int(tid))
        self.id_to_added = {v: k for k, v in self.added.items()}
        specials = [token_str(config.get(n)) for n in _SPECIAL_NAMES]
        extra_specials = (token_str(x) for x in config.get("additional_special_tokens") or [])
        self.additional = [t for t in extra_specials if t]
        self.all_special_tokens: list[str] = list(dict.fromkeys([t for t in specials if t] + self.additional))
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        if self.added:
            alternatives = sorted(self.added, key=len, reverse=True)
            pattern = "|".join(regex.escape(t) for t in alternatives)
            self._trie: regex.Pattern[str] | None = regex.compile(pattern)
        else:
            self._trie = None

    def finish_init(self) -> None:
        """Sets that need the family's vocabulary (call at the end of a subclass __init__)."""
        ids = (self.token_to_id(t) for t in self.all_special_tokens)
        self.all_special_ids = {i for i in ids if i is not None}
        base = self.base_vocab_size()
        self.legacy_added = {t for t in self.added if t not in self.all_special_tokens}
        self.legacy_added |= {t for t in self.additional if (self.token_to_id(t) or 0) >= base}

    # --- the family's model -----------------------------------------------------------------
    def _tokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def _piece_id(self, token: str) -> int | None:
        raise NotImplementedError

    def _id_piece(self, tid: int) -> str:
        raise NotImplementedError

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        raise NotImplementedError

    def base_vocab_size(self) -> int:
        raise NotImplementedError

    def prepare(self, text: str) -> str:
        return text

    # --- shared rules -----------------------------------------------------------------------
    def token_to_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        return self._piece_id(token)

    def vocab_size(self) -> int:
        return max([self.base_vocab_size() - 1, *self.added.values()]) + 1

    def split_added(self, text: str) -> list[str]:
        """The Trie split of ``PreTrainedTokenizer.tokenize`` with the lstrip/rstrip rules."""
        if self._trie is None:
            return [text]
        parts: list[str] = []
        pos = 0
        for m in self._trie.finditer(text):
            parts += [text[pos:m.start()], m.group()]
            pos = m.end()
        parts.append(text[pos:])
        parts = [p for i, p in enumerate(parts) if p or i % 2]  # keep tokens, drop empty text
        for i, tok in enumerate(parts):
            if tok not in self.added:
                continue
            if tok in self.rstrip and i + 1 < len(parts) and parts[i + 1] not in self.added:
                parts[i + 1] = parts[i + 1].lstrip()
            if tok in self.lstrip and i > 0 and parts[i - 1] not in self.added:
                parts[i - 1] = parts[i - 1].rstrip()
        return parts

    def tokenize(self, text: str) -> list[str]:
        out: list[str] = []
        for part in self.split_added(self.prepare(text)):
            if not part:
                continue
            out.extend([part] if part in self.added else self._tokenize(part))
        return out

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self._require_id(t) for t in self.tokenize(text)]
        if add_special_tokens:
            bos, eos = self._named("bos_token"), self._named("eos_token")
            if self.add_bos and bos is not None:
                ids.insert(0, bos)
            if self.add_eos and eos is not None:
                ids.append(eos)
        return ids

    def _require_id(self, token: str) -> int:
        tid = self.token_to_id(token)
        return tid if tid is not None else (self._named("unk_token") or 0)

    def _named(self, name: str) -> int | None:
        tok = token_str(self.config.get(name))
        return self.token_to_id(tok) if tok else None

    def id_to_token(self, tid: int) -> str:
        return self.id_to_added.get(tid) or self._id_piece(tid)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        tokens = [self.id_to_token(int(i)) for i in ids
                  if not (skip_special_tokens and int(i) in self.all_special_ids)]
        sub_texts: list[str] = []
        current: list[str] = []
        for tok in tokens:
            if tok in self.legacy_added:
                if current:
                    text = self.convert_tokens_to_string(current)
                    if text:
                        sub_texts.append(text)
                    current = []
                sub_texts.append(tok)
            else:
                current.append(tok)
        if current:
            sub_texts.append(self.convert_tokens_to_string(current))
        text = (" " if self.spaces_between_special_tokens else "").join(sub_texts)
        return clean_up_tokenization(text) if self.clean_up_spaces else text
