"""The official *slow* InternVL2 tokenizers, rebuilt from the data files a checkpoint ships.

InternVL loads its tokenizer with ``AutoTokenizer.from_pretrained(path, trust_remote_code=True,
use_fast=False)``: transformers' Python tokenizers (``Qwen2Tokenizer``, ``LlamaTokenizer``) or
the checkpoint's remote ``InternLM2Tokenizer``. Their rules, which the fast tokenizers do not all
share, are reproduced here; the model work is done by kept libraries (``tokenizers``' BPE for
Qwen2, ``sentencepiece`` for Llama/Phi-3 and InternLM2). No checkpoint code runs.

Shared rules (transformers' ``PreTrainedTokenizer``, 4.37-4.44):

- **encode**: added tokens (``added_tokens_decoder``) are split out first, leftmost-longest, also
  when a user types them; a token flagged ``rstrip`` eats all whitespace after it, ``lstrip``
  before it. Every other span goes through the family's ``_tokenize``.
- **decode**: ``skip_special_tokens`` drops exactly ``all_special_ids`` (bos/eos/unk/pad plus
  ``additional_special_tokens``), not every added token. Added tokens that are not special, and
  additional special tokens outside the base vocabulary, are cut out of the text and the pieces
  joined with ``" "`` (``spaces_between_special_tokens``) or ``""`` (Qwen2).

Family rules: :class:`Qwen2Slow` (NFC, Qwen2's regex pre-tokenizer, byte-level BPE, merges file
as shipped), :class:`LlamaSlow` (``legacy=False``: no dummy prefix after added tokens, a lone
``▁`` before a leading non-special added token), :class:`InternLM2Slow` (always cleans up
tokenization spaces, a space before base-vocabulary special tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.slow_tokenizers.base import SlowTokenizer, clean_up_tokenization, token_str
from models.slow_tokenizers.qwen2 import Qwen2Slow
from models.slow_tokenizers.sentencepiece import InternLM2Slow, LlamaSlow

FAMILIES: dict[str, type[SlowTokenizer]] = {
    "Qwen2Tokenizer": Qwen2Slow,
    "InternLM2Tokenizer": InternLM2Slow,
    "LlamaTokenizer": LlamaSlow,
}


def slow_family(config: dict[str, Any], folder: Path) -> type[SlowTokenizer] | None:
    """The slow class for a folder, from ``tokenizer_class`` and the files it needs."""
    name = str(config.get("tokenizer_class") or "").removesuffix("Fast")
    cls = FAMILIES.get(name)
    if cls is Qwen2Slow:
        return cls if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file() else None
    if cls is not None and (folder / "tokenizer.model").is_file():
        return cls
    return None


__all__ = ["FAMILIES", "InternLM2Slow", "LlamaSlow", "Qwen2Slow", "SlowTokenizer", "clean_up_tokenization",
           "slow_family", "token_str"]
