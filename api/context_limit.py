"""The model's context, as the API checks submissions against it, read from the checkpoint's
data files alone: ``config.json`` (the LLM's ``max_position_embeddings``) and the tokenizer
(``tokenizer.json`` through ``tokenizers``, or ``tokenizer.model`` through sentencepiece) to
count a prompt's tokens. Neither imports torch, and no checkpoint code runs.

``settings.max_context_tokens``: None takes the checkpoint's context; a number caps it (the
smaller of the two applies). A checkpoint the API cannot read (a hub id not in the local cache,
a folder on the workers only) leaves the cap alone, and without one the check is the worker's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import Settings
from jobs.requests import BOUNDARY_TOKENS, ModelLimits, RequestLimits

log = logging.getLogger(__name__)

__all__ = ["BOUNDARY_TOKENS", "ContextLimit", "load_context_limit", "request_limits"]


@dataclass(frozen=True)
class ContextLimit:
    max_tokens: int | None
    count_tokens: Callable[[str], int] | None
    source: str  # where the figures came from, for the startup log


def checkpoint_folder(model: str) -> Path | None:
    """A local folder, or a hub id already in huggingface_hub's cache (never downloaded here)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:
        return None
    return Path(found).parent if isinstance(found, str) else None


def max_position_embeddings(config: dict[str, Any]) -> int | None:
    """InternVL's chat config keeps the LLM's under ``llm_config`` (``text_config`` once
    converted to transformers' layout); a plain LLM config at the top."""
    for section in (config.get("llm_config"), config.get("text_config"), config):
        if isinstance(section, dict) and isinstance(section.get("max_position_embeddings"), int):
            scaling = section.get("rope_scaling") or section.get("rope_parameters") or {}
            kind = scaling.get("type") or scaling.get("rope_type") if isinstance(scaling, dict) else None
            if kind == "dynamic":
                # InternLM2's dynamic-NTK rope stretches past max_position_embeddings and the
                # official code answers such prompts (the engine runs them alone): no model limit.
                return None
            return int(section["max_position_embeddings"])
    return None


def token_counter(folder: Path) -> Callable[[str], int] | None:
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        return lambda text: len(tok.encode(text, add_special_tokens=False).ids)
    if (folder / "tokenizer.model").is_file():
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        return lambda text: len(sp.encode(text))
    return None


def load_context_limit(settings: Settings) -> ContextLimit:
    cap = settings.max_context_tokens
    folder = checkpoint_folder(settings.model)
    derived = counter = None
    if folder is not None:
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            derived = max_position_embeddings(config) if isinstance(config, dict) else None
            counter = token_counter(folder)
        except Exception as exc:  # an unreadable checkpoint is the worker's to report
            log.warning("cannot read the context of %s (%s); submissions are checked against "
                        "max_context_tokens=%s only", folder, exc, cap)
            derived = counter = None
    limits = [n for n in (derived, cap) if n is not None]
    source = f"checkpoint {folder}" if derived is not None else "setting" if cap is not None else "none"
    return ContextLimit(min(limits) if limits else None, counter, source)


def request_limits(settings: Settings) -> RequestLimits:
    """What submissions are judged against: every served model (the registry) with its own
    context, token counter and caps; the default model's also stand alone (``max_context_tokens``)."""
    registry = settings.registry
    models: dict[str, ModelLimits] = {}
    for spec in registry.models.values():
        context = load_context_limit(settings.for_model(spec.name))
        log.info("model %s (%s): submissions are checked against a context of %s tokens (from: %s)",
                 spec.name, spec.checkpoint, context.max_tokens, context.source)
        models[spec.name] = ModelLimits(spec.name, context.max_tokens, context.count_tokens,
                                        spec.max_tiles, spec.max_new_tokens)
    for spec in registry.models.values():  # a checkpoint as configured names its model too
        models.setdefault(spec.checkpoint, models[spec.name])
    default = models[registry.default]
    return RequestLimits(default_ttl_seconds=settings.default_ttl_seconds,
                         max_context_tokens=default.max_context_tokens, count_tokens=default.count_tokens,
                         models=models, default_model=registry.default)
