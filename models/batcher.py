"""A thread that owns the engine and batches requests from many callers.

    batcher = Batcher(engine, max_requests=16, max_tokens=32768, wait_ms=20)
    future = batcher.submit(ChatRequest(...))    # concurrent.futures.Future[ChatResult]
    result = future.result()
    batcher.close()

``submit`` validates the request on the caller's thread (``engine.prepare``: tokenisation, tile
counts, the token budget): an invalid request gets a failed future at once and never costs model
time. The engine thread then repeatedly takes what is pending, in arrival order, into one batch:

- at most ``max_requests`` requests, and ``batch size x (longest prompt + largest
  max_new_tokens) <= max_tokens`` (the padded KV-cache footprint; a single request always fits);
- only requests with the same ``engine.batch_key`` (see Engine: requests whose rope could depend
  on a neighbour run alone). Per-row sampling settings, stops and seeds *can* share a batch:
  the generation loop applies them row by row, so nothing else needs to match;
- a request that reaches an **idle** engine starts at once, alone: it never waits for company.
  Requests arriving while a batch runs queue up and form the next batch together. Only under
  load — requests were already waiting when the previous batch ended — and with ``wait_ms`` > 0
  does the engine wait up to ``wait_ms`` for more before running fewer than ``max_requests``
  (task threads whose jobs just finished are about to submit their next ones).

``Batcher.loading(load, ...)`` makes the engine thread load the engine itself before serving
(``batcher.engine`` waits for it): then one thread does all of the model's torch work. On the CPU
this is worth about 2x: OpenMP keeps a thread team per calling thread, and a model loaded (or
run) on a thread that stays alive — Celery's main thread — leaves a second team that slows every
parallel region of the engine thread (measured in BENCHMARKS.md, "one thread for torch").

An :class:`OutOfMemory` on a batch splits it in halves and retries each half (down to single
requests) instead of failing all.
A request whose ``should_cancel()`` is already true when its batch forms, or whose future was
cancelled, is completed without model work (finish_reason ``canceled``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass

from models.engine import ChatRequest, ChatResult, Engine, Prepared
from models.errors import EngineError, OutOfMemory

log = logging.getLogger(__name__)


@dataclass
class BatcherStats:
    """Counters of an engine thread, static or continuous (what ``GET /v1/workers`` and the
    heartbeat report). ``rows_stepped / decode_steps`` is the mean number of rows a decoding
    step ran; over ``slots`` it is the batch occupancy."""

    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    oom_splits: int = 0
    busy_seconds: float = 0.0  # time spent running the model
    prefill_seconds: float = 0.0  # of which prompts (ViT + LLM) of requests joining (continuous)
    slots: int = 0  # decode rows the engine runs at most at once
    kv_budget_tokens: int = 0  # KV-cache positions it may hold at once
    tokens_generated: int = 0
    decode_steps: int = 0
    rows_stepped: int = 0
    vision_tiles: int = 0  # tiles through the ViT
    vision_reused_tiles: int = 0  # tiles whose features were reused (models.vision_cache)
    prefix_reused_tokens: int = 0  # prompt tokens not prefilled again (Engine.prefill_after)
    # Gauges, as of the last step or batch: rows being decoded, KV positions they hold, and the
    # accelerator's memory (torch's allocator: allocated and reserved bytes; 0 on the CPU).
    running_rows: int = 0
    kv_tokens_in_use: int = 0
    gpu_memory_allocated_bytes: int = 0
    gpu_memory_reserved_bytes: int = 0


def sample_memory(stats: BatcherStats, device: object) -> None:
    """Record the accelerator memory torch holds on ``device`` (no synchronisation: the
    allocator's own counters)."""
    dev = getattr(device, "type", None) or str(device)
    if not str(dev).startswith("cuda"):
        return
    import torch

    stats.gpu_memory_allocated_bytes = int(torch.cuda.memory_allocated(device))  # type: ignore[arg-type]
    stats.gpu_memory_reserved_bytes = int(torch.cuda.memory_reserved(device))  # type: ignore[arg-type]


@dataclass
class _Item:
    prepared: Prepared
    future: Future[ChatResult]
    key: Hashable


class Batcher:
    def __init__(self, engine: Engine | None, *, max_requests: int = 16, max_tokens: int = 32768,
                 wait_ms: float = 20.0, start: bool = True,
                 load: Callable[[], Engine] | None = None) -> None:
        if (engine is None) == (load is None):
            raise ValueError("give an engine or a load function, not both")
        self._load = load
        self._loaded: Future[Engine] = Future()
        if engine is not None:
            self._loaded.set_result(engine)
        self.max_requests = max(1, int(max_requests))
        self.max_tokens = max(1, int(max_tokens))
        self.wait_s = max(0.0, float(wait_ms) / 1000.0)
        self.stats = BatcherStats(slots=self.max_requests, kv_budget_tokens=self.max_tokens)
        self._pending: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="captionq-engine", daemon=True)
        if start:
            self._thread.start()

    @classmethod
    def loading(cls, load: Callable[[], Engine], *, max_requests: int = 16, max_tokens: int = 32768,
                wait_ms: float = 20.0) -> Batcher:
        """A batcher whose engine thread first runs ``load()`` (see the module doc for why)."""
        return cls(None, load=load, max_requests=max_requests, max_tokens=max_tokens, wait_ms=wait_ms)

    @property
    def engine(self) -> Engine:
        """The engine; waits for the load of a :meth:`loading` batcher and raises its error."""
        return self._loaded.result()

    def start(self) -> None:
        """Start the engine thread of a batcher made with ``start=False`` (requests submitted
        before this all wait; the first batch takes as many of them as fit)."""
        self._thread.start()

    # --- callers ----------------------------------------------------------------------------
    def submit(self, request: ChatRequest) -> Future[ChatResult]:
        future: Future[ChatResult] = Future()
        try:
            engine = self.engine  # a loading batcher: waits for the load
        except Exception as exc:
            future.set_exception(EngineError(f"the model failed to load: {exc}"))
            return future
        try:
            prepared = engine.prepare(request)
        except EngineError as exc:
            future.set_exception(exc)
            return future
        with self._cond:
            if self._closed:
                future.set_exception(EngineError("the engine is shutting down"))
                return future
            self._pending.append(_Item(prepared, future, engine.batch_key(prepared)))
            self._cond.notify()
        return future

    def release_vision(self, key: str) -> None:
        """The requests with ``vision_key`` ``key`` are all answered: drop their cached image
        features (models.vision_cache)."""
        if self._loaded.done() and self._loaded.exception() is None:
            self._loaded.result().release_vision(key)

    def close(self, *, cancel_pending: bool = True, timeout: float | None = None) -> None:
        """Stop the engine thread after the running batch; pending requests are failed
        (``cancel_pending``) or still run first."""
        with self._cond:
            self._closed = True
            if cancel_pending:
                while self._pending:
                    item = self._pending.popleft()
                    if not item.future.done():
                        item.future.set_exception(EngineError("the engine shut down before this request ran"))
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        st = self.stats
        if st.batches:  # what the worker's operator (and bench/bench_worker_batching.py) reads
            log.info("engine served %d requests in %d batches (mean %.1f, largest %d), busy %.1f s",
                     st.requests, st.batches, st.requests / st.batches, st.largest_batch, st.busy_seconds)

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- engine thread ----------------------------------------------------------------------
    def _cost(self, batch: list[_Item]) -> int:
        longest = max(i.prepared.prompt_tokens for i in batch)
        most_new = max(i.prepared.request.params.max_new_tokens for i in batch)
        return len(batch) * (longest + most_new)

    def _take_batch(self) -> list[_Item] | None:
        with self._cond:
            # Requests already waiting when the engine comes back for work arrived while the last
            # batch ran: that is load, and a short wait may fill the batch. An idle engine (it had
            # to wait for this request) runs it at once: waiting would only add latency.
            under_load = bool(self._pending)
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None  # closed and drained
            deadline = time.monotonic() + (self.wait_s if under_load else 0.0)
            while len(self._pending) < self.max_requests and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Item] = []
            skipped: list[_Item] = []
            key = self._pending[0].key
            while self._pending and len(batch) < self.max_requests:
                item = self._pending.popleft()
                if item.key != key or (batch and self._cost([*batch, item]) > self.max_tokens):
                    skipped.append(item)
                    if item.key == key:
                        break  # over budget: keep arrival order for the rest
                    continue
                batch.append(item)
            self._pending.extendleft(reversed(skipped))
            return batch

    def _loop(self) -> None:
        if self._load is not None:
            try:
                engine = self._load()
                self._prepare(engine)
                self._loaded.set_result(engine)
            except BaseException as exc:  # the caller of .engine gets it; pending requests fail
                self._loaded.set_exception(exc)
                self.close(cancel_pending=True)
                return
            finally:
                self._load = None
        else:
            self._prepare(self.engine)  # an engine given ready-made
        self._serve()

    def _prepare(self, engine: Engine) -> None:
        """Set up what serving needs beyond the engine, on the engine thread, before ``engine``
        is handed to callers (a failure here is a load failure). Nothing for static batches."""

    def _serve(self) -> None:
        """Static batching until closed: take a batch, run it to its last token, repeat."""
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = [item for item in batch if self._start(item)]
            if live:
                self._run(live)

    def _count_vision(self) -> None:
        engine = self.engine
        vision = engine.vision_stats
        self.stats.vision_tiles, self.stats.vision_reused_tiles = vision.tiles, vision.reused_tiles
        self.stats.prefix_reused_tokens = engine.prefix_reused_tokens

    def _start(self, item: _Item) -> bool:
        """Mark the future running; complete cancelled/canceled requests without model work."""
        if not item.future.set_running_or_notify_cancel():
            return False
        check = item.prepared.request.should_cancel
        try:
            canceled = bool(check()) if check is not None else False
        except Exception:
            log.exception("should_cancel failed; running the request")
            canceled = False
        if canceled:
            p = item.prepared
            item.future.set_result(ChatResult(text="", prompt_tokens=p.prompt_tokens, output_tokens=0,
                                              finish_reason="canceled", output_ids=[]))
            return False
        return True

    def _run(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            results = self.engine.generate_batch([item.prepared for item in batch])
        except OutOfMemory as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            self.stats.oom_splits += 1
            log.warning("out of memory on a batch of %d; retrying in halves", len(batch))
            _release_cached_memory()
            half = len(batch) // 2
            self._run(batch[:half])
            self._run(batch[half:])
            return
        except BaseException as exc:  # every future must complete, whatever happened
            log.exception("batch of %d failed", len(batch))
            for item in batch:
                item.future.set_exception(exc if isinstance(exc, Exception) else EngineError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        took = time.perf_counter() - started
        log.debug("batch of %d ran in %.2f s", len(batch), took)
        sample_memory(self.stats, self.engine.info.device)
        self.stats.busy_seconds += took
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        # a row leaves the batch after its last token: one step per token of the longest answer
        tokens = sum(r.output_tokens for r in results)
        self.stats.tokens_generated += tokens
        self.stats.rows_stepped += tokens
        self.stats.decode_steps += max((r.output_tokens for r in results), default=0)
        self._count_vision()
        for item, result in zip(batch, results, strict=True):
            item.future.set_result(result)


def _release_cached_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # best effort only
        pass


__all__ = ["Batcher", "BatcherStats"]
