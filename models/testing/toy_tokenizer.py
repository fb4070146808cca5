"""The conformance kit's toy tokenizer, written for any of the test checkpoints.

Rule (identical to ``tests/data/conformance/models/*/tiny_tokens.json``): special-token strings
map to their ids (longest match first); every other UTF-8 byte ``b`` maps to id ``3 + b``; ``<s>``
(or the layout's BOS) is prepended when ``add_bos``. It is a byte-level BPE without merges, so
``tokenizers`` / ``PreTrainedTokenizerFast`` load it natively. Ids that are neither bytes nor
special tokens are named ``[<id>]`` (they decode to that text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

TOY_TEXT_ENCODING = (
    "special-token strings (longest match first) -> their ids; any other UTF-8 byte b -> "
    "id 3+b; BOS prepended when add_bos is true"
)
NOTE = "Tiny test vocabulary (not a real tokenizer). Ids of the special tokens the InternVL2 code uses."
_INTERNVL_TOKENS = (
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
)


@dataclass(frozen=True)
class ToyVocab:
    """Ids 0-2 are ``low`` specials, bytes are 3..258, ``high`` specials end the vocabulary."""

    vocab_size: int
    low: tuple[str, str, str]
    high: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    unk: str | None
    fillers: tuple[str, ...] = field(default=())  # low ids that are placeholders, not specials

    @property
    def special_tokens(self) -> dict[str, int]:
        low = {t: i for i, t in enumerate(self.low) if t not in self.fillers}
        start = self.vocab_size - len(self.high)
        return low | {t: start + i for i, t in enumerate(self.high)}

    def id(self, token: str) -> int:
        return self.special_tokens[token]

    @property
    def added(self) -> dict[int, str]:
        start = self.vocab_size - len(self.high)
        return {i: t for i, t in enumerate(self.low)} | {start + i: t for i, t in enumerate(self.high)}


VOCABS: dict[str, ToyVocab] = {
    # exactly the kit's internvl2-internlm2 tokenizer
    "internlm2": ToyVocab(
        1024,
        ("<unk>", "<s>", "</s>"),
        (
            "<|plugin|>",
            "<|interpreter|>",
            "<|action_end|>",
            "<|action_start|>",
            "<|im_end|>",
            "<|im_start|>",
            *_INTERNVL_TOKENS,
        ),
        "<s>",
        "</s>",
        "</s>",
        "<unk>",
    ),
    # exactly the kit's internvl2-qwen2 tokenizer (no BOS, like Qwen2)
    "qwen2": ToyVocab(
        1100,
        ("<unused0>", "<unused1>", "<unused2>"),
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *_INTERNVL_TOKENS),
        None,
        "<|im_end|>",
        "<|endoftext|>",
        None,
        fillers=("<unused0>", "<unused1>", "<unused2>"),
    ),
    # Phi-3 style: <s> BOS, <|endoftext|> eos/pad, chat tokens of phi3-chat
    "phi3": ToyVocab(
        1100,
        ("<unk>", "<s>", "</s>"),
        ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>", *_INTERNVL_TOKENS),
        "<s>",
        "<|endoftext|>",
        "<|endoftext|>",
        "<unk>",
    ),
    # Llama-3 style (Hermes-2-Theta-Llama-3-70B): <|begin_of_text|> BOS, ChatML tokens, eos <|im_end|>
    "llama": ToyVocab(
        1100,
        ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>"),
        ("<|im_start|>", "<|im_end|>", *_INTERNVL_TOKENS),
        "<|begin_of_text|>",
        "<|im_end|>",
        "<|end_of_text|>",
        None,
    ),
}


@lru_cache(maxsize=1)
def _byte_chars() -> list[str]:
    """GPT-2 byte-level alphabet: byte value -> the printable character the BPE vocab uses."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tokenizer_json(v: ToyVocab) -> dict[str, Any]:
    added = v.added
    byte_chars = _byte_chars()
    vocab = {}
    for i in range(v.vocab_size):
        vocab[added[i] if i in added else byte_chars[i - 3] if 3 <= i < 259 else f"[{i}]"] = i
    post = None
    if v.bos is not None:
        bos = {"SpecialToken": {"id": v.bos, "type_id": 0}}
        seq = {"Sequence": {"id": "A", "type_id": 0}}
        post = {
            "type": "TemplateProcessing",
            "single": [bos, seq],
            "pair": [bos, seq, bos, {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {v.bos: {"id": v.bos, "ids": [v.id(v.bos)], "tokens": [v.bos]}},
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in sorted(added.items())
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": False,
        },
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def _named(v: ToyVocab) -> dict[str, str]:
    named = {"bos_token": v.bos, "eos_token": v.eos, "pad_token": v.pad, "unk_token": v.unk}
    return {k: t for k, t in named.items() if t is not None}


def _additional(v: ToyVocab) -> list[str]:
    named = set(_named(v).values())
    return [t for t, _ in sorted(v.special_tokens.items(), key=lambda kv: kv[1]) if t not in named]


def tokenizer_config(v: ToyVocab) -> dict[str, Any]:
    decoder = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in sorted(v.added.items())
    }
    top = {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": _additional(v),
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_named(v),
    }
    return dict(sorted(top.items()))  # transformers' order: top level sorted, ids in numeric order


def special_tokens_map(v: ToyVocab) -> dict[str, Any]:
    return {"additional_special_tokens": _additional(v), **_named(v)}


def tiny_tokens(v: ToyVocab, *, variant: str, like: str, template: str, stop: str) -> dict[str, Any]:
    return {
        "variant": variant,
        "like": like,
        "template": template,
        "note": NOTE,
        "special_tokens": dict(sorted(v.special_tokens.items(), key=lambda kv: kv[1])),
        "add_bos": v.bos is not None,
        "bos_token": v.bos,
        "bos_token_id": None if v.bos is None else v.id(v.bos),
        "pad_token": v.pad,
        "pad_token_id": v.id(v.pad),
        "img_context_token_id": v.id("<IMG_CONTEXT>"),
        "img_start_token_id": v.id("<img>"),
        "img_end_token_id": v.id("</img>"),
        "stop_token_used_by_chat": stop,
        "stop_token_id_used_by_chat": v.id(stop),
        "toy_text_encoding": TOY_TEXT_ENCODING,
    }


def write_tokenizer(
    directory: Path, v: ToyVocab, *, variant: str, like: str, template: str, stop: str
) -> None:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json, tiny_tokens.json."""

    # Formatting as the kit's files were saved (byte-identical for the kit's two layouts).
    def dump(name: str, obj: Any, indent: int, sort: bool, end: str = "\n") -> None:
        text = json.dumps(obj, indent=indent, sort_keys=sort, ensure_ascii=False)
        (directory / name).write_text(text + end, encoding="utf-8")

    dump("tokenizer.json", tokenizer_json(v), 2, False, end="")
    dump("tokenizer_config.json", tokenizer_config(v), 2, False)
    dump("special_tokens_map.json", special_tokens_map(v), 2, True)
    dump(
        "tiny_tokens.json", tiny_tokens(v, variant=variant, like=like, template=template, stop=stop), 1, False
    )
