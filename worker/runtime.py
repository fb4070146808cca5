"""The per-process worker runtime: everything a task needs, built once, shared by all task threads.

A worker process runs Celery's ``threads`` pool, so every task thread of the process shares one
:class:`Runtime`: one database engine (a connection pool), one storage configuration, one
publisher, one live-event publisher and — for the gpu queue — one model (:class:`Engine`) behind
one batcher whose thread owns the accelerator.

Where the engine runs (``Settings.engine_process``, see :func:`uses_engine_process`):

- in its own process (:mod:`worker.engine_client`, :mod:`worker.engine_host`), the default on an
  accelerator: there the engine thread is bound by Python and kernel launches, and beside the
  task threads of this process it would wait for the GIL at every torch call;
- in this process, on the batcher's thread (the default for device ``cpu``, where the engine's
  torch calls are long and an extra process only costs start time and memory).

The model is loaded in this process (never in a forking parent: a child forked from a process
that ran torch can hang on its thread pools), once, under a lock. ``worker.app`` loads it when
the worker starts, before it consumes anything; :meth:`Runtime.batcher` also loads it lazily so
that a runtime used outside the worker (benchmarks, tests) works the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from core.db import Database
from core.settings import Settings
from jobs.live import LivePublisher
from jobs.outbox_cleaner import OutboxCleaner
from jobs.queue import Publisher
from jobs.service import JobService
from jobs.transitions import ServedModel
from storage.config import StorageConfig
from worker.cancels import CancelListener

if TYPE_CHECKING:
    from celery import Celery

    from jobs.heartbeats import Heartbeat
    from models.batcher import Batcher
    from models.engine import Engine, EngineInfo
    from worker.engine_client import EngineProcess, RemoteEngine

    # what a task thread submits to, and the engine as this process sees it (its ``.info``)
    AnyBatcher: TypeAlias = Batcher | EngineProcess
    AnyEngine: TypeAlias = Engine | RemoteEngine

log = logging.getLogger(__name__)


def torch_threads(settings: Settings) -> int:
    """Intra-op threads for torch: the configured number, else every core on a CPU device and a
    few on a GPU host (there torch's CPU work is small and the task threads need the cores for
    downloads, decoding and tiling)."""
    if settings.torch_threads:
        return max(1, int(settings.torch_threads))
    cores = os.cpu_count() or 1
    return cores if settings.device == "cpu" else max(1, min(4, cores // 2))


def apply_switch_interval(settings: Settings, device: str) -> float:
    """Shorten the GIL's switch interval in a worker whose model runs on an accelerator; returns
    the interval in force (seconds).

    Every torch call releases the GIL, so the engine thread of a GPU worker, which is bound by
    Python and kernel launches, competes for it hundreds of times per decoding step with the
    task threads. Whenever one of those is running Python (a database write, a media decode),
    the engine waits until it is forced to let go: up to the switch interval, 5 ms by default.
    With one busy Python thread beside it, a 3 µs torch call took 4.7 ms at 5 ms and 49 µs at
    0.2 ms (``python bench/bench_gil_switch.py``; BENCHMARKS.md's GPU section has the worker
    run that prompted this). On a CPU device the engine's calls are long and this is left
    alone."""
    ms = settings.gil_switch_interval_ms
    if device != "cpu" and ms > 0:
        sys.setswitchinterval(ms / 1000)
        log.info("GIL switch interval set to %.2f ms (model on %s)", ms, device)
    return sys.getswitchinterval()


def uses_engine_process(settings: Settings) -> bool:
    """Whether a gpu worker runs its engine in a process of its own: the setting when given,
    else yes for any device but the CPU (``auto`` resolves to CUDA when there is one)."""
    if settings.engine_process is not None:
        return settings.engine_process
    device = settings.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device != "cpu"


class Runtime:
    def __init__(self, settings: Settings, *, celery_app: Celery | None = None) -> None:
        self.settings = settings
        self.db = Database(settings)
        self.storage = StorageConfig.from_settings(settings)
        self.publisher = Publisher.from_settings(settings, celery_app)
        self.jobs = JobService(self.db, settings, self.publisher, OutboxCleaner(self.db))
        url = settings.events_redis_url
        self.live: LivePublisher | None = LivePublisher(url) if url else None
        # Only a gpu worker runs jobs; the listener starts with the model (load_model).
        self.cancels: CancelListener | None = None
        self._lock = threading.Lock()
        self._engine: AnyEngine | None = None
        self._batcher: AnyBatcher | None = None
        # Called (on a reader thread) if the engine process dies; the worker exits there.
        self.on_engine_exit: Callable[[int | None], None] | None = None
        # A gpu worker's identity in ``workers`` and the thread that keeps its heartbeat; jobs it
        # claims carry the id (jobs.heartbeats).
        self.worker_id: str | None = None
        self.heartbeat: Heartbeat | None = None
        # The checkpoint's revision (models.checkpoint.revision), known once the model loaded.
        self.revision: str | None = None

    # --- the model ------------------------------------------------------------------------
    def load_model(self) -> AnyEngine:
        """Load the engine and start the batcher (once; later calls return the same engine), in
        the engine process or in this one (see the module doc).

        In this process the engine thread loads the model itself (``Batcher.loading``), so no
        thread but that one ever runs torch: the caller here is Celery's main thread, which lives
        on, and a model loaded on it would make every CPU batch about 2x slower (see
        models.batcher)."""
        with self._lock:
            if self._engine is None:
                s = self.settings
                batcher: AnyBatcher
                if uses_engine_process(s):
                    from worker.engine_client import EngineProcess

                    batcher = EngineProcess.start(s, on_exit=self._engine_exited)
                    engine: AnyEngine = batcher.engine  # raises what the load raised
                else:
                    from worker.engine_host import make_batcher

                    batcher = make_batcher(s, self._load_engine)
                    engine = batcher.engine  # raises what the load raised
                    apply_switch_interval(s, engine.info.device)
                # Compile (or load from numba's cache) and check the exact resize now, not in the
                # first job: the first image would otherwise wait a few seconds for it.
                from models import tile_resize

                tile_resize.available()
                if self.settings.events_redis_url:
                    self.cancels = CancelListener(self.settings.events_redis_url)
                self.revision = model_revision(s.model)
                self._batcher = batcher
                self._engine = engine
            return self._engine

    def _load_engine(self) -> Engine:
        """On the engine thread: torch's thread count (OpenMP's is per calling thread), then the
        model."""
        from worker.engine_host import load_engine

        return load_engine(self.settings)

    def _engine_exited(self, exitcode: int | None) -> None:
        if self.on_engine_exit is not None:
            self.on_engine_exit(exitcode)

    def start_heartbeat(self) -> str:
        """Register this process as a live gpu worker and keep its heartbeat (once)."""
        with self._lock:
            if self.heartbeat is None:
                from jobs.heartbeats import Heartbeat, new_worker_id

                self.worker_id = new_worker_id()
                served = self.served
                self.heartbeat = Heartbeat(self.db, self.worker_id, self.settings.heartbeat_seconds,
                                           model=served.name, stats_source=self.engine_stats,
                                           about={"model_revision": self.revision,
                                                  "checkpoint": self.settings.model})
            assert self.worker_id is not None
            return self.worker_id

    def engine_stats(self) -> dict[str, Any]:
        """The engine's counters, keyed by ``models.batcher.BatcherStats``' field names (slots,
        kv_budget_tokens, tokens_generated, decode_steps, rows_stepped, busy_seconds, ...): what
        each heartbeat stores and ``GET /v1/workers`` shows. Read from the heartbeat thread while
        the engine thread counts: each field is read whole, and a field one batch ahead of
        another only shifts that batch into the next interval's rates. From the engine process,
        as it last sent them (at most ~1 s old)."""
        batcher = self._batcher
        if batcher is not None:
            return dataclasses.asdict(batcher.stats)
        from models.batcher import BatcherStats

        s = self.settings  # no engine yet: its configured capacity, nothing counted
        return dataclasses.asdict(BatcherStats(slots=s.batch_max_requests if s.batching else 1,
                                               kv_budget_tokens=s.batch_max_tokens))

    @property
    def served(self) -> ServedModel:
        """The model this worker runs, as its claims check and record it (jobs.transitions)."""
        s = self.settings
        name = s.model_spec().name
        return ServedModel(name, takes_unnamed=name == s.registry.default, revision=self.revision)

    @property
    def engine(self) -> AnyEngine:
        """The engine (in the engine process's mode, an object that has only its ``.info``)."""
        return self._engine if self._engine is not None else self.load_model()

    @property
    def engine_info(self) -> EngineInfo:
        return self.engine.info

    @property
    def batcher(self) -> AnyBatcher:
        if self._batcher is None:
            self.load_model()
        assert self._batcher is not None
        return self._batcher

    @property
    def model_loaded(self) -> bool:
        return self._engine is not None

    def capacity(self) -> dict[str, Any]:
        s = self.settings
        return {"engine_process": uses_engine_process(s),
                "batch_max_requests": s.batch_max_requests if s.batching else 1,
                "batch_max_tokens": s.batch_max_tokens, "batch_wait_ms": s.batch_wait_ms,
                "torch_threads": torch_threads(s),
                "gil_switch_interval_ms": round(sys.getswitchinterval() * 1000, 3)}

    def close(self) -> None:
        """Stop the batcher (after the task threads have finished) and release connections."""
        with self._lock:
            if self._batcher is not None:
                self._batcher.close(cancel_pending=True, timeout=30)
            if self.heartbeat is not None:
                self.heartbeat.close()
        if self.live is not None:
            self.live.close()
        if self.cancels is not None:
            self.cancels.close()
        if self.jobs.cleaner is not None:
            self.jobs.cleaner.close()
        self.publisher.close()
        self.db.dispose()


# --- the process-wide instance ----------------------------------------------------------------
_current: Runtime | None = None
_current_lock = threading.Lock()


def configure(settings: Settings, *, celery_app: Celery | None = None) -> Runtime:
    """Build this process's runtime (the worker entry point calls this once)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Runtime(settings, celery_app=celery_app)
        return _current


def current() -> Runtime:
    """The runtime of this process; a worker not started through :func:`worker.app.run_worker`
    (``celery -A worker.cli_app``) builds it from the environment on first use."""
    if _current is not None:
        return _current
    from core.settings import load_settings

    return configure(load_settings())


def shutdown() -> None:
    global _current
    with _current_lock:
        rt, _current = _current, None
    if rt is not None:
        rt.close()


def model_revision(model: str) -> str | None:
    """The loaded checkpoint's revision (None when its folder cannot be read here: the job then
    records no revision rather than a wrong one)."""
    from models.checkpoint.revision import checkpoint_revision
    from models.checkpoint.source import resolve_folder

    try:
        folder, _name = resolve_folder(model)
        return checkpoint_revision(folder)
    except Exception as exc:
        log.warning("cannot compute the revision of %s: %s: %s", model, type(exc).__name__, exc)
        return None
