"""The operator's model registry: which models this deployment serves, under which names.

``CAPTIONQ_MODELS`` is a JSON object of name → checkpoint (a folder or a hub id), or name →
``{"checkpoint": …, "max_tiles": …, "max_new_tokens": …, "max_context_tokens": …}`` with that
model's limits; ``CAPTIONQ_DEFAULT_MODEL`` names the one a request without ``model`` gets (the
first entry when unset). With neither set, ``CAPTIONQ_MODEL`` is the one model, named
``CAPTIONQ_MODEL_NAME`` or :data:`DEFAULT_NAME`: the name does not depend on the checkpoint's
spelling, so an API and workers that spell one folder differently still share its queue.

The API judges a request's ``model`` against this registry (``unknown_model``), a worker serves
one entry (``captionq worker --model NAME``) with :meth:`Settings.for_model`'s settings, and each
entry has its own broker queue (``jobs.queue.caption_queue``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

DEFAULT_NAME = "default"
# A name becomes part of a queue name (``gpu.<name>``) and of URLs: no spaces, no slashes.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
LIMIT_KEYS = ("max_tiles", "max_new_tokens", "max_context_tokens")


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: its name, checkpoint and the limits its requests must keep within
    (None: the request schema's own bounds, the checkpoint's context)."""

    name: str
    checkpoint: str
    max_tiles: int | None = None
    max_new_tokens: int | None = None
    max_context_tokens: int | None = None

    def limits(self) -> dict[str, int]:
        return {k: v for k in LIMIT_KEYS if (v := getattr(self, k)) is not None}


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    default: str

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def resolve(self, name: str | None) -> ModelSpec | None:
        """The entry a request's ``model`` names: its name or, as OpenAI clients send, its
        checkpoint as configured; the default for None. None when nothing matches."""
        if name is None:
            return self.models[self.default]
        if name in self.models:
            return self.models[name]
        for spec in self.models.values():
            if spec.checkpoint == name:
                return spec
        return None


def parse_entry(name: str, value: Any) -> ModelSpec:
    """One ``CAPTIONQ_MODELS`` entry; raises ValueError with what is wrong."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r} must be 1-40 letters, digits, '.', '_' or '-'")
    if isinstance(value, str):
        value = {"checkpoint": value}
    if not isinstance(value, dict):
        raise ValueError(f"model {name!r}: expected a checkpoint or an object with 'checkpoint'")
    unknown = sorted(set(value) - {"checkpoint", *LIMIT_KEYS})
    if unknown:
        raise ValueError(f"model {name!r}: unknown key(s) {', '.join(unknown)} "
                         f"(allowed: checkpoint, {', '.join(LIMIT_KEYS)})")
    checkpoint = value.get("checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise ValueError(f"model {name!r}: 'checkpoint' must be a folder or a hub id")
    limits: dict[str, int] = {}
    for key in LIMIT_KEYS:
        v = value.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"model {name!r}: {key} must be a positive integer")
        limits[key] = v
    return ModelSpec(name, checkpoint.strip(), **limits)


def build_registry(models: dict[str, Any] | None, default: str | None, *, checkpoint: str,
                   legacy_name: str | None, max_context_tokens: int | None) -> Registry:
    """The registry from the settings' values (see the module docs). Raises ValueError."""
    if not models:
        name = legacy_name or DEFAULT_NAME
        if not NAME_PATTERN.match(name):
            name = DEFAULT_NAME
        if default is not None and default != name:
            raise ValueError(f"CAPTIONQ_DEFAULT_MODEL={default!r} names no model: without "
                             f"CAPTIONQ_MODELS the one model is {name!r} (CAPTIONQ_MODEL)")
        return Registry({name: ModelSpec(name, checkpoint, max_context_tokens=max_context_tokens)}, name)
    specs = {name: parse_entry(name, value) for name, value in models.items()}
    chosen = default or next(iter(specs))
    if chosen not in specs:
        raise ValueError(f"CAPTIONQ_DEFAULT_MODEL={chosen!r} is not in CAPTIONQ_MODELS "
                         f"({', '.join(specs)})")
    return Registry(specs, chosen)
