"""A key/value cache that reserves its storage once per generation instead of growing by copies.

transformers' ``DynamicLayer`` appends each step's keys and values with ``torch.cat``: every step
allocates a new cache for every layer and copies the old one into it, so the memory a batch needs
grows (with a transient second copy per layer) until its last token. :class:`ReservedLayer`
allocates what the whole generation needs (prompt + the largest ``max_new_tokens``) at the
prefill, writes each step's states into it and hands attention a view of the filled part:

- the footprint is fixed when the batch starts, which is what the batcher's token budget counts
  (``batch x (longest prompt + max_new_tokens)``), so running out of memory shows up at the
  prefill, where the batcher splits the batch, not halfway through an answer already streamed;
- a step copies only its own token. On the CPU this is no measurable speed-up
  (``bench/bench_kv_cache.py``: 1.04x median, within noise, BENCHMARKS.md).

The values attention sees are the same numbers in the same layout (``[B, H, T, D]``, the last
dimension contiguous; only the stride between heads differs), and the token ids are identical
(tests, conformance).

Anything that replaces ``keys``/``values`` from outside (``batch_select_indices`` when a row
finishes, ``crop``, ``reset``) is noticed at the next update, which re-seeds the buffer from them,
so every base-class operation stays correct without being re-implemented here.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """``DynamicLayer`` with storage for ``capacity`` positions reserved at the first update
    (doubling if a generation ever outgrows it)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = max(1, int(capacity))
        self._k: torch.Tensor | None = None  # [B, H, capacity, D]
        self._v: torch.Tensor | None = None
        self._view: torch.Tensor | None = None  # the keys view handed out last

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """key/value_states ``[B, H_kv, T_new, D]``; returns views ``[B, H_kv, T_cached + T_new, D]``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        if self._k is None or self._v is None or keys is not self._view:
            # First update, or keys/values replaced from outside: adopt them as a full buffer,
            # so that the allocation below gives them room (with no copy for an empty start).
            self._k, self._v = keys, values
        n = keys.shape[-2] if keys.numel() else 0
        end = n + key_states.shape[-2]
        room = self._k.shape[-2] if self._k.shape[:2] == key_states.shape[:2] else 0
        if end > room:
            self._allocate(key_states, self.capacity if end <= self.capacity else max(2 * room, end), n)
        self._k[..., n:end, :].copy_(key_states)
        self._v[..., n:end, :].copy_(value_states)
        self.keys, self.values = self._k[..., :end, :], self._v[..., :end, :]
        self._view = self.keys
        return self.keys, self.values

    def _allocate(self, like: torch.Tensor, size: int, keep: int) -> None:
        """New buffers of ``size`` positions shaped like ``like`` (batch, heads, head dim), with the
        first ``keep`` positions copied over."""
        assert self._k is not None and self._v is not None
        b, h, _, d = like.shape
        k, v = like.new_empty(b, h, size, d), like.new_empty(b, h, size, d)
        if keep:
            k[..., :keep, :].copy_(self._k[..., :keep, :])
            v[..., :keep, :].copy_(self._v[..., :keep, :])
        self._k, self._v = k, v


def reserved_cache(text_config: Any, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` for ``text_config`` whose full-attention layers reserve ``capacity``
    positions (sliding-window layers, if the model has any, stay as transformers makes them)."""
    cache = DynamicCache(config=text_config)
    cache.layers = [ReservedLayer(capacity) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache


__all__ = ["ReservedLayer", "reserved_cache"]
