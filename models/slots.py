"""Static key/value storage for continuous batching: one row ("slot") per running request.

Each layer keeps keys and values as ``[slots, kv_heads, capacity, head_dim]`` tensors allocated
once, when the engine starts serving. A request is given the lowest free slot; its prefill's
keys and values are copied into columns ``[0, prompt)`` of that slot, and each decoding step
writes one column per row at the row's own length (a scatter: rows of different lengths step
together with no padding and no copies). Attention reads columns ``[0, L)`` of the first ``S``
slots, where ``S`` and ``L`` are buckets covering the occupied slots and the longest row (see
:mod:`models.decode_step`), with a mask that hides each row's unwritten columns.

Because the storage never moves, a decoding step has fixed addresses and shapes per bucket: what
a CUDA graph needs. Because a row's memory is reserved when it joins, running out of memory
cannot happen halfway through an answer; admission (:mod:`models.continuous`) checks that the
request fits ``capacity`` instead.
"""

from __future__ import annotations

from typing import Any

import torch


def kv_shape(text_config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a text config."""
    heads = int(getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads)
    dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    return int(text_config.num_hidden_layers), heads, int(dim)


def kv_bytes_per_token(text_config: Any, dtype: torch.dtype) -> int:
    """Bytes of keys and values one position costs over all layers."""
    layers, heads, dim = kv_shape(text_config)
    return 2 * layers * heads * dim * torch.empty((), dtype=dtype).element_size()


class SlotKV:
    """Per-layer key/value storage for ``slots`` rows of ``capacity`` positions each."""

    def __init__(self, text_config: Any, *, slots: int, capacity: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        layers, heads, dim = kv_shape(text_config)
        self.slots, self.capacity = int(slots), int(capacity)
        shape = (self.slots, heads, self.capacity, dim)
        # zeros, not empty: a masked column still enters attention's arithmetic as 0 x value,
        # and uninitialised memory may hold NaN (0 x NaN = NaN)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def store(self, slot: int, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Copy a single request's prefill cache (per layer ``keys, values`` ``[1, H, n, D]``)
        into ``slot``; returns ``n``."""
        n = 0
        for i, (k, v) in enumerate(layers):
            n = k.shape[-2]
            self.keys[i][slot, :, :n].copy_(k[0])
            self.values[i][slot, :, :n].copy_(v[0])
        return n

    def view(self, rows: int, length: int, write_at: torch.Tensor) -> SlotView:
        return SlotView(self, rows, length, write_at)


class SlotView:
    """What one decoding step's attention layers see as their cache: ``update`` writes each row's
    new key/value at ``write_at[row]`` and returns the first ``rows`` slots' first ``length``
    columns. Shapes and addresses are fixed for a (rows, length) pair."""

    def __init__(self, kv: SlotKV, rows: int, length: int, write_at: torch.Tensor) -> None:
        self.kv, self.rows, self.length = kv, rows, length
        self._index: torch.Tensor | None = None
        self._write_at = write_at  # [rows] int64, on the device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``key_states``/``value_states`` ``[rows, H, 1, D]``."""
        if self._index is None or self._index.shape != key_states.shape:
            r, h, _, d = key_states.shape
            self._index = self._write_at.view(r, 1, 1, 1).expand(r, h, 1, d)
        keys = self.kv.keys[layer_idx][: self.rows]
        values = self.kv.values[layer_idx][: self.rows]
        keys.scatter_(2, self._index, key_states)
        values.scatter_(2, self._index, value_states)
        return keys[:, :, : self.length], values[:, :, : self.length]


__all__ = ["SlotKV", "SlotView", "kv_bytes_per_token", "kv_shape"]
