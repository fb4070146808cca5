"""The engine process: the model and its batcher, in a process of their own (the child side).

A GPU worker's engine thread is bound by Python and kernel launches: every torch call gives up
the GIL and must win it back, and inside the worker up to 32 task threads run Python (downloads,
decoding, database writes) meanwhile. On an H200 a 16-row decoding step took ~75 ms in the worker
against 21.6 ms for the engine alone. Here the engine thread shares its interpreter with nothing
but one thread that reads requests, so it keeps its standalone speed (docs/ARCHITECTURE.md, "The
engine process"). :mod:`worker.engine_client` starts this process and talks to it.

Messages (tuples on two ``torch.multiprocessing`` queues; tensors cross in shared memory):

- parent -> child: ``("submit", id, request, wants_tokens)`` (the request without its callbacks),
  ``("cancel", id)``, ``("release", vision_key)``, ``("close", cancel_pending, timeout)``;
- child -> parent: ``("ready", EngineInfo, stats)`` or ``("load_failed", error)`` once, then
  ``("token", id, delta)``, ``("done", id, ChatResult, stats)``, ``("error", id, error, stats)``
  and ``("stats", stats)`` (when the counters changed, at most once a second).

This module also holds the two choices both modes share: :func:`load_engine` (the model with the
worker's settings) and :func:`make_batcher` (which batcher class runs it).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from core.settings import Settings

if TYPE_CHECKING:
    from models.batcher import Batcher
    from models.engine import ChatRequest, ChatResult, Engine

log = logging.getLogger(__name__)

STATS_EVERY_S = 1.0


def load_engine(settings: Settings) -> Engine:
    """The model as a worker runs it; called on the thread that will run it (OpenMP keeps a
    thread team per calling thread, so torch's thread count is set here too)."""
    import torch

    from models.engine import Engine
    from worker.runtime import torch_threads

    torch.set_num_threads(torch_threads(settings))
    s = settings
    return Engine.load(
        s.model, device=s.device, dtype=s.dtype, attn_implementation=s.attn_implementation,
        quantization=s.quantization, cache_dir=s.data_dir / "converted",
        vision_chunk_tiles=s.vision_chunk_tiles, name=s.model_name,
        vision_cache_tiles=s.vision_cache_tiles, prefix_cache_tokens=s.prefix_cache_tokens,
        allow_download=True,  # a hub id not cached is fetched (refused when offline)
        # the operator's cap on prompt + new tokens; None: only the model's own limit
        max_context_tokens=s.max_context_tokens,
    )


def make_batcher(settings: Settings, load: Callable[[], Engine]) -> Batcher:
    """The batcher for ``settings.batch_mode``, loading its engine on its own thread: the one
    place that picks the class (``static``: models.batcher.Batcher; ``continuous``:
    models.continuous.ContinuousBatcher, same interface)."""
    from models.batcher import Batcher
    from models.continuous import ContinuousBatcher

    cls = ContinuousBatcher if settings.batch_mode == "continuous" else Batcher
    max_requests = settings.batch_max_requests if settings.batching else 1
    return cls.loading(load, max_requests=max_requests, max_tokens=settings.batch_max_tokens,
                       wait_ms=settings.batch_wait_ms)


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling (every models.errors class does, with its class
    and message), else an EngineError that names it."""
    from models.errors import EngineError

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return EngineError(f"{type(exc).__name__}: {exc}")


def stats_dict(batcher: Batcher) -> dict[str, Any]:
    return dataclasses.asdict(batcher.stats)


class _Host:
    """The child's state: the batcher, the requests it runs, the ids the parent cancelled."""

    def __init__(self, batcher: Batcher, events: Any) -> None:
        self.batcher = batcher
        self.events = events
        self.cancelled: set[int] = set()
        self.running: set[int] = set()
        self.lock = threading.Lock()
        self.sent_stats: dict[str, Any] = {}

    def stats(self) -> dict[str, Any]:
        self.sent_stats = stats_dict(self.batcher)
        return self.sent_stats

    def submit(self, rid: int, request: ChatRequest, wants_tokens: bool) -> None:
        events = self.events
        if wants_tokens:
            request.on_token = lambda delta: events.put(("token", rid, delta))
        request.should_cancel = lambda: rid in self.cancelled
        with self.lock:
            self.running.add(rid)
        future = self.batcher.submit(request)
        future.add_done_callback(lambda f: self._finished(rid, f))

    def _finished(self, rid: int, future: Future[ChatResult]) -> None:
        with self.lock:
            self.running.discard(rid)
            self.cancelled.discard(rid)
        exc = future.exception()
        if exc is not None:
            self.events.put(("error", rid, portable_error(exc), self.stats()))
        else:
            self.events.put(("done", rid, future.result(), self.stats()))

    def cancel(self, rid: int) -> None:
        with self.lock:
            if rid in self.running:
                self.cancelled.add(rid)


def serve(settings: Settings, requests: Any, events: Any,
          load: Callable[[], Engine] | None = None) -> None:
    """The engine process's main function: load, say ready (or why not), serve until closed.

    ``load`` replaces :func:`load_engine` (a picklable function: benchmarks and tests run a
    stand-in engine)."""
    from core.logging import setup_logging

    setup_logging(settings)
    batcher = make_batcher(settings, load or (lambda: load_engine(settings)))
    try:
        engine = batcher.engine
    except BaseException as exc:
        events.put(("load_failed", portable_error(exc)))
        events.close()
        events.join_thread()
        return
    from worker.runtime import apply_switch_interval

    # the child's only other Python thread is this reader: a short interval still lets the engine
    # thread win the GIL back quickly while it tokenises a new request
    apply_switch_interval(settings, engine.info.device)
    host = _Host(batcher, events)
    events.put(("ready", engine.info, host.stats()))
    try:
        _serve_messages(host, requests)
    finally:
        events.put(("stats", host.stats()))
        events.close()
        events.join_thread()
    # Everything is answered and flushed: skip the interpreter's teardown of torch and the
    # loaded model (over a second), which only delays the worker's own exit.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve_messages(host: _Host, requests: Any) -> None:
    while True:
        try:
            message = requests.get(timeout=STATS_EVERY_S)
        except queue.Empty:
            parent = multiprocessing.parent_process()
            if parent is not None and not parent.is_alive():
                log.error("engine process: the worker is gone; stopping")
                host.batcher.close(cancel_pending=True, timeout=5)
                return
            if stats_dict(host.batcher) != host.sent_stats:
                host.events.put(("stats", host.stats()))
            continue
        kind = message[0]
        if kind == "submit":
            _, rid, request, wants_tokens = message
            host.submit(rid, request, wants_tokens)
        elif kind == "cancel":
            host.cancel(message[1])
        elif kind == "release":
            host.batcher.release_vision(message[1])
        elif kind == "close":
            _, cancel_pending, timeout = message
            host.batcher.close(cancel_pending=cancel_pending, timeout=timeout)
            return
        else:
            log.error("engine process: unknown message %r", kind)
