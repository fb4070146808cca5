"""Continuous batching: requests join the running decode batch at step boundaries.

    batcher = ContinuousBatcher(engine, max_requests=32, max_tokens=65536)
    future = batcher.submit(ChatRequest(...))    # the same interface as models.batcher.Batcher

The engine thread loops over one decoding step at a time. Between two steps it:

1. **admits** waiting requests in arrival order while a slot is free (``max_requests`` slots) and
   the request fits a slot (prompt + ``max_new_tokens`` <= ``max_tokens / max_requests``
   positions: each slot's share of the KV-cache budget, :mod:`models.slots`). Newcomers' prompts
   run through the ViT and the LLM (their prefill; prompts of equal length together, unpadded:
   bulk jobs with one template and tile count share one forward), their keys and values are
   copied into their slots and their first tokens are picked; from the next step on they decode
   with the rest.
   At most ``prefill_tokens`` prompt tokens are admitted between two steps (at least one
   request), so a burst of long prompts delays the running rows by a bounded time;
2. **steps** every running row at once (:class:`models.decode_step.DecodeStep`, a CUDA graph on a
   GPU), picks each row's token with its own settings (``models.generation.take_step``), and
3. **retires** rows that stopped, reached their length or were canceled: their results go out
   and their slots are free for the next admission, right away.

Requests that share a ``vision_key`` (one job's tasks, rounds or grounding phrases) share more
than the image features: their prompts start with the same tokens up to the last ``</img>``
(system message and image tokens, most of a prompt). The first of them to join prefills its
whole prompt and leaves the keys and values of that prefix with the engine
(``Engine.prefix_cache``); the others join with a prefill of the rest of their prompt only
(``Engine.prefill_after``), the prefix's keys and values copied into their slots. The prefix is
kept until the key is released (``release_vision``); a prompt that does not start with its key's
prefix (another system message) is prefilled whole. (The static path does the same for a
request that runs alone.)

A row's numbers never depend on its neighbours: its prefill has no padding, and in a step each
row attends only to its own slot. In float32 on the CPU its tokens equal the same request run alone
through ``Engine.generate_batch`` (tests/models/test_continuous.py, for staggered arrivals,
cancels and mixed settings).

Requests the slot path cannot take run through the static path (``Engine.generate_batch``), alone,
once the running rows have drained: one whose ``Engine.batch_key`` is not shared (its rope may
stretch past the model's context) or that does not fit a slot. A model the slot path does not
support (split over several GPUs, flash-attention, sliding-window layers) is served by the
static batcher's loop (:class:`models.batcher.Batcher`) instead, with a log line saying so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from models.batcher import Batcher, _Item, _release_cached_memory, sample_memory
from models.decode_step import DecodeStep
from models.engine import Engine, RowState, is_out_of_memory
from models.errors import EngineError, OutOfMemory
from models.generation import take_step
from models.slots import SlotKV

log = logging.getLogger(__name__)

# The accelerator's memory is sampled at every join and every this many decoding steps.
MEMORY_SAMPLE_STEPS = 64


@dataclass
class _Running:
    item: _Item
    state: RowState
    length: int  # positions held in the slot (the next token is written at this column)


def unsupported(engine: Engine) -> str | None:
    """Why ``engine``'s model cannot use the slot path (None: it can)."""
    cfg = engine.model.config.get_text_config()
    if engine.info.device == "split":
        return "the model is split over several GPUs"
    if engine.info.attn_implementation not in ("sdpa", "eager"):
        return f"{engine.info.attn_implementation} attention takes no per-row mask"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "the model has sliding-window layers"
    if not hasattr(engine.model.model, "language_model"):
        return "unknown model layout"
    return None


def slot_capacity(engine: Engine, slots: int, kv_tokens: int) -> int:
    """Positions per slot: its share of the KV budget, within the span where rope is the same for
    every row (longrope switches factors past the original context)."""
    rope = engine.spec.text_kwargs.get("rope_parameters") or {}
    limit = int(rope.get("original_max_position_embeddings") or engine.spec.max_position_embeddings)
    share = min(kv_tokens // max(1, slots), limit)
    # a multiple of 16: attention kernels want the key length aligned (else they pad or fall back)
    return share - share % 16 if share >= 16 else max(1, share)


class ContinuousBatcher(Batcher):
    """See the module docstring. ``prefill_tokens``: prompt tokens admitted between two steps;
    ``graphs``: capture decoding steps as CUDA graphs (None = on a CUDA device)."""

    def __init__(self, engine: Engine | None, *, max_requests: int = 16, max_tokens: int = 32768,
                 wait_ms: float = 20.0, start: bool = True, load: Any = None,
                 prefill_tokens: int = 8192, graphs: bool | None = None) -> None:
        self.prefill_tokens = max(1, int(prefill_tokens))
        self.graphs = graphs
        self.step: DecodeStep | None = None
        self._running: dict[int, _Running] = {}
        super().__init__(engine, max_requests=max_requests, max_tokens=max_tokens, wait_ms=wait_ms,
                         start=start, load=load)

    @classmethod
    def loading(cls, load: Any, *, max_requests: int = 16, max_tokens: int = 32768,
                wait_ms: float = 20.0) -> ContinuousBatcher:
        return cls(None, load=load, max_requests=max_requests, max_tokens=max_tokens, wait_ms=wait_ms)

    # --- engine thread ----------------------------------------------------------------------
    def _prepare(self, engine: Engine) -> None:
        """Allocate the slots and the decoding step (their memory is part of the load)."""
        why = unsupported(engine)
        if why is not None:
            log.info("continuous batching off (%s): static batches", why)
            return
        capacity = slot_capacity(engine, self.max_requests, self.max_tokens)
        embed = engine.model.get_input_embeddings().weight
        kv = SlotKV(engine.model.config.get_text_config(), slots=self.max_requests, capacity=capacity,
                    dtype=embed.dtype, device=embed.device)
        self.step = DecodeStep(engine.model, kv, graphs=self.graphs)
        self.stats.kv_budget_tokens = self.max_requests * capacity
        log.info("continuous batching: %d slots x %d positions (%.2f GiB of KV cache), CUDA graphs %s",
                 self.max_requests, capacity, kv.nbytes / 2**30, "on" if self.step.use_graphs else "off")

    def _serve(self) -> None:
        if self.step is None:  # _prepare found the model unsupported
            super()._serve()
            return
        engine, capacity = self.engine, self.step.kv.capacity
        while True:
            admitted = self._admit(engine, capacity)
            if admitted is None:
                return
            if self._running:
                self._decode(engine)

    def _admit(self, engine: Engine, capacity: int) -> list[_Item] | None:
        """Take what may join now (None: closed and drained). Blocks while there is nothing to do."""
        with self._cond:
            while not self._pending and not self._running and not self._closed:
                self._cond.wait()
            if not self._pending and not self._running:
                return None
            taken: list[_Item] = []
            alone: _Item | None = None
            budget = self.prefill_tokens
            while self._pending and len(self._running) + len(taken) < self.max_requests:
                item = self._pending[0]
                p = item.prepared
                fits = p.prompt_tokens + p.request.params.max_new_tokens <= capacity
                if item.key != "shared" or not fits:
                    if not self._running and not taken:
                        alone = self._pending.popleft()  # the slots are empty: run it now
                    break  # arrival order: the rest waits for it
                if taken and p.prompt_tokens > budget:
                    break
                taken.append(self._pending.popleft())
                budget -= p.prompt_tokens
        if alone is not None:
            if self._start(alone):
                self._run([alone])
            return []
        live = [item for item in taken if self._start(item)]
        # the first request of a vision key without a stored prefix leads: it stores the prefix
        # that the others of its key (followers) then start from
        leaders: list[_Item] = []
        followers: list[_Item] = []
        keys: set[str] = set()
        for item in live:
            key = item.prepared.request.vision_key
            if key is not None and (key in keys or key in engine.prefix_cache) and \
                    engine.image_prefix_length(item.prepared):
                followers.append(item)
            else:
                leaders.append(item)
                if key is not None:
                    keys.add(key)
        by_length: dict[int, list[_Item]] = {}
        for item in leaders:
            by_length.setdefault(item.prepared.prompt_tokens, []).append(item)
        for group in by_length.values():  # equal lengths share one unpadded forward
            self._join(engine, group)
        for item in followers:
            self._join(engine, [item], engine.stored_prefix(item.prepared))
        if taken:
            self.stats.batches += 1
        return taken

    def _free_slot(self) -> int:
        return next(s for s in range(self.max_requests) if s not in self._running)

    @torch.inference_mode()
    def _join(self, engine: Engine, group: list[_Item],
              prefix: tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]] | None = None) -> None:
        """Prefill requests of one prompt length into free slots and pick their first tokens;
        with ``prefix``, one request whose prompt starts with it (only the rest is prefilled)."""
        started = time.perf_counter()
        try:
            states = [engine.start_row(item.prepared) for item in group]
            if prefix is not None:
                logits, cache = engine.prefill_after(group[0].prepared, *prefix)
                layers = [(layer.keys, layer.values) for layer in cache.layers]
            else:
                logits, layers = engine.prefill([item.prepared for item in group])
                for b, item in enumerate(group):
                    engine.keep_prefix(item.prepared, layers, row=b)
            take_step(logits, [st.row for st in states])
        except BaseException as exc:
            self._fail(group, exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            took = time.perf_counter() - started
            self.stats.busy_seconds += took
            self.stats.prefill_seconds += took
            self._count_vision()
        self.stats.tokens_generated += len(group)
        assert self.step is not None
        for b, (item, state) in enumerate(zip(group, states, strict=True)):
            if self._ended(state):
                self._finish(engine, item, state)
                continue
            slot = self._free_slot()
            length = self.step.kv.store(slot, [(k[b:b + 1], v[b:b + 1]) for k, v in layers])
            self._running[slot] = _Running(item, state, length)
        self.stats.largest_batch = max(self.stats.largest_batch, len(self._running))
        self._gauges()
        sample_memory(self.stats, engine.info.device)

    def _gauges(self) -> None:
        self.stats.running_rows = len(self._running)
        self.stats.kv_tokens_in_use = sum(run.length for run in self._running.values())

    @torch.inference_mode()
    def _decode(self, engine: Engine) -> None:
        """One step of every running row; rows that end leave their slot."""
        assert self.step is not None
        started = time.perf_counter()
        top = max(self._running) + 1
        tokens = [0] * top
        positions = [0] * top
        for slot, run in self._running.items():
            tokens[slot], positions[slot] = run.state.row.ids[-1], run.length
        longest = max(run.length for run in self._running.values()) + 1
        slots = sorted(self._running)
        try:
            logits = self.step(tokens, positions, longest)
            picked = logits[torch.tensor(slots, device=logits.device)]
            take_step(picked, [self._running[s].state.row for s in slots])
        except BaseException as exc:  # the step's state is unknown: every running row fails
            log.exception("decoding step of %d rows failed", len(slots))
            runs = [self._running.pop(s) for s in slots]
            self._fail([r.item for r in runs], exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self.stats.busy_seconds += time.perf_counter() - started
        self.stats.decode_steps += 1
        self.stats.rows_stepped += len(slots)
        self.stats.tokens_generated += len(slots)
        for slot in slots:
            run = self._running[slot]
            run.length += 1
            if self._ended(run.state):
                del self._running[slot]
                self._finish(engine, run.item, run.state)
        self._gauges()
        if self.stats.decode_steps % MEMORY_SAMPLE_STEPS == 0:
            sample_memory(self.stats, engine.info.device)

    @staticmethod
    def _ended(state: RowState) -> bool:
        row = state.row
        if row.finish_reason is None and row.should_cancel is not None and row.should_cancel():
            row.finish_reason = "canceled"
        return row.finish_reason is not None

    def _finish(self, engine: Engine, item: _Item, state: RowState) -> None:
        try:
            result = engine.finish_row(state)
        except Exception as exc:
            item.future.set_exception(exc)
            return
        self.stats.requests += 1
        item.future.set_result(result)

    def _fail(self, items: list[_Item], exc: BaseException) -> None:
        if is_out_of_memory(exc):
            _release_cached_memory()
            exc = OutOfMemory(f"out of memory: {exc}")
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc if isinstance(exc, Exception) else EngineError(str(exc)))


__all__ = ["ContinuousBatcher", "slot_capacity", "unsupported"]
