"""A real tokenizer folder inside a tiny test checkpoint (``write_test_checkpoint(...,
tokenizer=FOLDER)``, ``captionq make-test-checkpoint --tokenizer FOLDER``).

The LLM layout follows the tokenizer's family (``tokenizer_class``): Qwen2Tokenizer -> qwen2
(InternVL2-1B), InternLM2Tokenizer -> internlm2 (InternVL2-2B/8B/26B), LlamaTokenizer -> phi3
(InternVL2-4B) unless a Llama layout is asked for. The embedding and LM head get one row per
token id. Only data files are copied (never ``*.py``). A folder without InternVL's image tokens
(the Phi-3 LLM's own tokenizer) gets them appended as special added tokens, as InternVL's
training code adds them (``tokenizer.add_tokens(..., special_tokens=True)``); their ids are
the next free ones, so they are not InternVL2-4B's published ids.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.tokenizer import Tokenizer

#: InternVL's tokens, in the order its training code adds them
INTERNVL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>",
                   "<box>", "</box>")
_DATA_SUFFIXES = (".json", ".model", ".txt", ".tiktoken")
_FAMILY = {"Qwen2Tokenizer": "qwen2", "InternLM2Tokenizer": "internlm2", "LlamaTokenizer": "phi3"}


@dataclass(frozen=True)
class RealVocab:
    """What the config and weight writers need of a vocabulary (as :class:`ToyVocab` gives)."""

    vocab_size: int
    special_tokens: dict[str, int]

    def id(self, token: str) -> int:
        return self.special_tokens[token]


def tokenizer_family(folder: Path, llm: str | None = None) -> str:
    """The LLM layout for a tokenizer folder (``llm="llama"`` keeps Llama for a LlamaTokenizer)."""
    config = _read(folder / "tokenizer_config.json")
    name = str(config.get("tokenizer_class") or "").removesuffix("Fast")
    if name not in _FAMILY:
        raise ValueError(f"{folder}: tokenizer_class {name or None!r} is not one of {', '.join(_FAMILY)}")
    family = _FAMILY[name]
    return "llama" if family == "phi3" and llm == "llama" else family


def _read(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def copy_tokenizer(source: Path, out: Path) -> RealVocab:
    """Copy the tokenizer's data files into ``out``, adding InternVL's tokens where missing;
    returns the vocabulary as loaded from the copy."""
    for f in sorted(source.iterdir()):
        if f.is_file() and f.suffix in _DATA_SUFFIXES and f.name != "config.json":
            shutil.copyfile(f, out / f.name)
    tok = Tokenizer.load(out, require_image_tokens=False)
    missing = [t for t in INTERNVL_TOKENS if tok.token_id(t) is None]
    if missing:
        _add_tokens(out, missing, tok.vocab_size)
        # tokenizer.json would now disagree with the slow files InternVL loads: drop it
        (out / "tokenizer.json").unlink(missing_ok=True)
        tok = Tokenizer.load(out)
    config = _read(out / "tokenizer_config.json")
    specials = {str(e["content"]): int(i) for i, e in (config.get("added_tokens_decoder") or {}).items()}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and tok.token_id(value) is not None:
            specials[value] = int(tok.token_id(value))  # type: ignore[arg-type]
    return RealVocab(vocab_size=tok.vocab_size, special_tokens=specials)


def _add_tokens(out: Path, tokens: list[str], first_id: int) -> None:
    config = _read(out / "tokenizer_config.json")
    decoder = config.setdefault("added_tokens_decoder", {})
    extra = config.setdefault("additional_special_tokens", [])
    added = _read(out / "added_tokens.json")
    for i, token in enumerate(tokens):
        decoder[str(first_id + i)] = {"content": token, "lstrip": False, "normalized": False,
                                      "rstrip": False, "single_word": False, "special": True}
        extra.append(token)
        added[token] = first_id + i
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    (out / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n", encoding="utf-8")
    smap = _read(out / "special_tokens_map.json")
    if smap:
        smap["additional_special_tokens"] = [*smap.get("additional_special_tokens", []), *tokens]
        (out / "special_tokens_map.json").write_text(json.dumps(smap, indent=2) + "\n", encoding="utf-8")
