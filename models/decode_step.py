"""One decoding step of the language model over the slot cache, eager or replayed as a CUDA graph.

The model's own modules do the work (embedding, decoder layers, final norm, LM head), driven
here instead of through the model's ``forward`` — gpt-fast's split of model and generation —
because a step needs three things that ``forward`` does not give:

- **per-row positions and lengths.** Row ``r`` writes its new key/value at column ``pos[r]``
  (:class:`models.slots.SlotView`) and attends to columns ``[0, pos[r]]``: the mask is built
  from ``pos`` on the device. Rows that joined at different times step together unpadded;
- **no host work inside the step.** Rope's cos/sin come from a table the model's own rotary
  module computed once (for positions below the model's context, dynamic NTK and longrope give
  the unscaled frequencies, which is what a shared batch holds: ``Engine.batch_key`` sends longer
  requests to the static path). The model-level ``forward`` re-checks the longest position on
  the host every step, which a CUDA graph cannot contain;
- **fixed shapes.** A step runs over the first ``S`` slots and ``L`` columns, ``S`` and ``L``
  rounded up to buckets (powers of two), so each (S, L) pair is captured once as a CUDA graph
  and then replayed: one launch instead of several hundred, and the host is free between steps.
  Without graphs (the CPU) the shapes are the occupied slots and the longest row, unrounded.

Graphs are captured lazily, per bucket, on the first step that needs one. Where capture is not
possible (the CPU, a failure on an older GPU or driver) the same code runs eagerly; the logits
are the same numbers either way. The step returns float32 logits ``[S, V]`` (a graph's output
buffer: valid until the next step).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from models.slots import SlotKV

log = logging.getLogger(__name__)

MIN_LENGTH_BUCKET = 256


def bucket(n: int, limit: int, floor: int = 1) -> int:
    """The smallest power of two >= ``n`` (and >= ``floor``), capped at ``limit``."""
    b = floor
    while b < n:
        b *= 2
    return min(b, limit)


def rope_table(model: Any, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[length, head_dim]`` of positions ``0..length-1`` from the model's rotary
    module (the numbers a forward pass over those positions uses)."""
    lm = model.model.language_model
    probe = torch.zeros(1, 1, dtype=lm.embed_tokens.weight.dtype, device=device)
    cos, sin = lm.rotary_emb(probe, torch.arange(length, device=device).unsqueeze(0))
    return cos[0].contiguous(), sin[0].contiguous()


class DecodeStep:
    """``step(tokens, positions, rows) -> logits``; see the module docstring."""

    def __init__(self, model: Any, kv: SlotKV, *, graphs: bool | None = None) -> None:
        lm = model.model.language_model
        self.embed = lm.embed_tokens
        self.layers = list(lm.layers[: lm.config.num_hidden_layers])
        self.norm = lm.norm
        self.head = model.lm_head
        self.kv = kv
        self.device = self.embed.weight.device
        self.dtype = self.embed.weight.dtype
        self.cos, self.sin = rope_table(model, kv.capacity, self.device)
        n = kv.slots
        self.tokens = torch.zeros(n, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(n, dtype=torch.long, device=self.device)
        self.columns = torch.arange(kv.capacity, device=self.device)
        self.use_graphs = self.device.type == "cuda" if graphs is None else graphs
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool: Any = None
        self.captures = 0

    def buckets(self, rows: int, longest: int) -> tuple[int, int]:
        """(S, L) for ``rows`` occupied slots (the highest index + 1) and a longest row that
        will hold ``longest`` positions after this step. Graphs need few distinct shapes: powers
        of two. Eager steps take the shapes as they are (the length rounded up to 16 for aligned
        attention): on a CPU the step's cost grows with every row and column it computes."""
        if not self.use_graphs:
            return rows, min(self.kv.capacity, -(-longest // 16) * 16)
        return (bucket(rows, self.kv.slots),
                bucket(longest, self.kv.capacity, floor=min(MIN_LENGTH_BUCKET, self.kv.capacity)))

    @torch.inference_mode()
    def __call__(self, tokens: list[int], positions: list[int], longest: int) -> torch.Tensor:
        """``tokens[r]`` is slot r's last token and ``positions[r]`` its length before it
        (= the column it is written to); free slots below the highest occupied one pass token 0
        at position 0. Returns float32 logits ``[S, V]``; rows past ``len(tokens)`` are junk."""
        s, length = self.buckets(len(tokens), longest)
        n = len(tokens)
        self.tokens[:n].copy_(torch.tensor(tokens), non_blocking=True)
        self.positions[:n].copy_(torch.tensor(positions), non_blocking=True)
        if n < s:
            self.tokens[n:s].zero_()
            self.positions[n:s].zero_()
        if not self.use_graphs:
            return self._forward(s, length)
        graph = self._graphs.get((s, length))
        if graph is None:
            graph = self._capture(s, length)
            if graph is None:
                return self._forward(s, length)
        graph[0].replay()
        return graph[1]

    def _forward(self, rows: int, length: int) -> torch.Tensor:
        pos = self.positions[:rows]
        hidden = self.embed(self.tokens[:rows].unsqueeze(-1))  # [S, 1, H]
        visible = self.columns[:length].unsqueeze(0) <= pos.unsqueeze(1)  # [S, L]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill(~visible, torch.finfo(self.dtype).min)[:, None, None, :]
        rope = (self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1))  # [S, 1, D] each
        cache = self.kv.view(rows, length, pos)
        position_ids = pos.unsqueeze(1)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, cache=cache,
                           use_cache=True, position_embeddings=rope)
        return self.head(self.norm(hidden[:, -1])).float()

    def _capture(self, rows: int, length: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor] | None:
        try:
            stream = torch.cuda.Stream(device=self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph: lazy inits, cuBLAS workspaces
                    self._forward(rows, length)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._forward(rows, length)
        except Exception as exc:  # fall back for good: the eager step is the same computation
            log.warning("CUDA graph capture failed (%s: %s); decoding steps run eagerly",
                        type(exc).__name__, exc)
            self.use_graphs = False
            return None
        self._graphs[(rows, length)] = (graph, out)
        self.captures += 1
        log.info("captured the decoding step for %d rows x %d positions as a CUDA graph", rows, length)
        return graph, out


__all__ = ["DecodeStep", "bucket", "rope_table"]
