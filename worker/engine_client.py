"""The worker's side of the engine process (:mod:`worker.engine_host`): a batcher look-alike.

    engine = EngineProcess.start(settings, on_exit=...)   # spawns the process, which loads
    info = engine.engine.info                               # waits for the load, raises its error
    future = engine.submit(ChatRequest(...))                # concurrent.futures.Future[ChatResult]
    engine.stats                                            # BatcherStats, as the child last sent
    engine.close()

The process is started with the ``spawn`` context, never ``fork``: a child forked from a process
that ran torch can hang on torch's thread pools. Requests cross on ``torch.multiprocessing``
queues, whose pickler moves tensors (``pixel_values``) into shared memory: the tiles are not
copied through the pipe. A request's callbacks cannot cross, so:

- ``on_token`` deltas come back as messages, which a reader thread here hands to the request's
  callback, in the order the engine produced them;
- ``should_cancel`` is polled here (every :data:`CANCEL_POLL_S` for the requests in flight) and a
  true answer sends a cancel; the child's ``should_cancel`` for that request then returns True,
  and the engine drops the row at its next step as it would in-process.

Errors keep their class and message (models.errors classes pickle as themselves), so the worker
maps them to the same job error codes. If the process dies, ``on_exit`` is called first (the
worker exits there: its supervisor restarts it and the broker redelivers its jobs), then every
request in flight fails with an :class:`EngineError`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.settings import Settings
from models.batcher import BatcherStats
from models.errors import EngineError

if TYPE_CHECKING:
    from models.engine import ChatRequest, ChatResult, Engine, EngineInfo

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.05
READ_TIMEOUT_S = 0.5  # how often the reader looks whether the process is still alive


@dataclass(frozen=True)
class RemoteEngine:
    """What the worker reads of an engine that lives in another process: its description."""

    info: EngineInfo


@dataclass
class _InFlight:
    future: Future[ChatResult]
    on_token: Callable[[str], None] | None
    should_cancel: Callable[[], bool] | None
    cancel_sent: bool = False


class EngineProcess:
    """The engine process seen from the worker: ``submit``/``close``/``stats``/``engine`` like
    models.batcher.Batcher."""

    def __init__(self, settings: Settings, *, load: Callable[[], Engine] | None = None,
                 on_exit: Callable[[int | None], None] | None = None) -> None:
        import torch.multiprocessing as tmp

        from worker import engine_host

        ctx = tmp.get_context("spawn")
        self._requests: Any = ctx.Queue()
        self._events: Any = ctx.Queue()
        self._process = ctx.Process(target=engine_host.serve, name="captionq-engine",
                                    args=(settings, self._requests, self._events, load), daemon=True)
        self._on_exit = on_exit
        self._ready: Future[RemoteEngine] = Future()
        self._inflight: dict[int, _InFlight] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closing = False
        self._gone = threading.Event()
        self.stats = BatcherStats()
        self._process.start()
        self._reader = threading.Thread(target=self._read, name="captionq-engine-reader", daemon=True)
        self._canceller = threading.Thread(target=self._poll_cancels, name="captionq-engine-cancels",
                                           daemon=True)
        self._reader.start()
        self._canceller.start()

    @classmethod
    def start(cls, settings: Settings, *, load: Callable[[], Engine] | None = None,
              on_exit: Callable[[int | None], None] | None = None) -> EngineProcess:
        return cls(settings, load=load, on_exit=on_exit)

    @property
    def engine(self) -> RemoteEngine:
        """Waits for the model to load in the child; raises what the load raised."""
        return self._ready.result()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    # --- callers ----------------------------------------------------------------------------
    def submit(self, request: ChatRequest) -> Future[ChatResult]:
        future: Future[ChatResult] = Future()
        try:
            _ = self.engine  # waits for the load
        except Exception as exc:
            future.set_exception(EngineError(f"the model failed to load: {exc}"))
            return future
        # the callbacks stay here; the child learns whether to stream (a cancel can always come)
        payload = dataclasses.replace(request, on_token=None, should_cancel=None)
        with self._lock:
            if self._closing or self._gone.is_set():
                future.set_exception(EngineError("the engine is shutting down"))
                return future
            rid = next(self._ids)
            self._inflight[rid] = _InFlight(future, request.on_token, request.should_cancel)
            self._requests.put(("submit", rid, payload, request.on_token is not None))
        return future

    def release_vision(self, key: str) -> None:
        """Drop the image features cached for ``key`` in the engine process (see
        models.batcher.Batcher.release_vision)."""
        with self._lock:
            if not self._closing and not self._gone.is_set():
                self._requests.put(("release", key))

    def close(self, *, cancel_pending: bool = True, timeout: float | None = None) -> None:
        """Stop the engine process after what it runs (pending requests fail with
        ``cancel_pending``); a process that does not stop in time is killed."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        if self._process.is_alive():
            self._requests.put(("close", cancel_pending, timeout))
            self._process.join(None if timeout is None else timeout + 5)
            if self._process.is_alive():
                log.warning("engine process %s did not stop; killing it", self._process.pid)
                self._process.kill()
                self._process.join(5)
        self._reader.join(READ_TIMEOUT_S * 4)
        self._fail_all(EngineError("the engine shut down before this request ran"))
        self._requests.close()
        self._requests.cancel_join_thread()

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reader and canceller threads -------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                message = self._events.get(timeout=READ_TIMEOUT_S)
            except queue.Empty:
                if not self._process.is_alive():
                    break
                continue
            except (EOFError, OSError):
                break
            if not self._dispatch(message):
                return
        self._process.join(1)
        self._died(self._process.exitcode)

    def _dispatch(self, message: tuple[Any, ...]) -> bool:
        """Handle one message; False once the child has said it will send no more."""
        kind = message[0]
        if kind == "token":
            item = self._inflight.get(message[1])
            if item is not None and item.on_token is not None:
                try:
                    item.on_token(message[2])
                except Exception:
                    log.exception("on_token failed")
        elif kind in ("done", "error"):
            with self._lock:
                item = self._inflight.pop(message[1], None)
            self.stats = BatcherStats(**message[3])
            if item is not None and not item.future.done():
                if kind == "done":
                    item.future.set_result(message[2])
                else:
                    item.future.set_exception(message[2])
        elif kind == "stats":
            self.stats = BatcherStats(**message[1])
        elif kind == "ready":
            self.stats = BatcherStats(**message[2])
            self._ready.set_result(RemoteEngine(message[1]))
        elif kind == "load_failed":
            self._ready.set_exception(message[1])
            self._gone.set()
            self._process.join(5)
            return False
        else:
            log.error("unknown message from the engine process: %r", kind)
        return True

    def _died(self, exitcode: int | None) -> None:
        self._gone.set()
        if not self._ready.done():
            self._ready.set_exception(EngineError(
                f"the engine process exited (code {exitcode}) before the model was loaded"))
            return
        if self._closing:
            return
        log.critical("the engine process exited unexpectedly (code %s)", exitcode)
        if self._on_exit is not None:
            self._on_exit(exitcode)
        self._fail_all(EngineError(f"the engine process exited unexpectedly (code {exitcode})"))

    def _fail_all(self, error: EngineError) -> None:
        with self._lock:
            items, self._inflight = list(self._inflight.values()), {}
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def _poll_cancels(self) -> None:
        while not self._gone.wait(CANCEL_POLL_S):
            if self._closing and not self._process.is_alive():
                return
            with self._lock:
                candidates = [(rid, item) for rid, item in self._inflight.items() if not item.cancel_sent]
            for rid, item in candidates:
                try:
                    cancel = item.future.cancelled() or (
                        item.should_cancel is not None and bool(item.should_cancel()))
                except Exception:
                    log.exception("should_cancel failed; the request keeps running")
                    cancel = False
                if cancel:
                    item.cancel_sent = True
                    self._requests.put(("cancel", rid))
