"""The worker's Celery app and ``run_worker``, what ``captionq worker`` runs.

One worker process per GPU. Why the ``threads`` pool, also for the gpu queue:

- the model is loaded **once, in this process** (:class:`LoadModel`, a worker bootstep that runs
  before the consumer starts, so nothing is taken off the queue until the model can run it).
  Nothing ever forks after torch was imported and used: the prefork pool would either load the
  model N times or fork children from a parent that ran torch, and those can hang on torch's
  thread pools. The engine itself runs in a process of its own on an accelerator (started with
  ``spawn``, see worker.engine_client: out of reach of the task threads' GIL), or else on the
  batcher's engine thread, the only thread that runs the model's torch: it loads the model
  itself (``Batcher.loading``), because on the CPU a thread team left by another live thread
  (this main thread) slows every batch by up to 2x. The embedded beat also runs as
  a thread here (:class:`ThreadedBeat`), not as Celery's forked beat process;
- many task threads (default ``2 x batch_max_requests``) each download, decode and tile their
  job and hand it to the one :class:`models.batcher.Batcher`, so the batcher always has enough
  jobs in flight to fill a batch while the next ones are being prepared.

Delivery guarantees come from :func:`jobs.queue.make_celery`: late acks, prefetch 1 per thread,
reject on worker lost, and a Redis visibility timeout longer than the longest job. SIGTERM is a
warm shutdown: the consumer stops taking messages, running tasks finish (the batcher keeps
running until the pool has drained), prefetched messages that never started go back to the
broker unacknowledged. A job a dead worker left ``running`` comes back through the broker
(``redelivered``) or the sweeper and counts one more attempt.

The threads pool does not enforce Celery's time limits, so the pipeline enforces the soft limit
itself (``job_soft_time_limit``: the job fails with ``timeout``), and the sweeper recovers jobs
stuck past the hard limit.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

from celery import Celery, bootsteps

from core import logcontext
from core.settings import Settings
from jobs.queue import QUEUE_GPU, QUEUE_IO, TASK_CAPTION, gpu_queues, make_celery
from worker import broker_fixes, probe, runtime, tasks
from worker import metrics as wmetrics

log = logging.getLogger(__name__)

DEFAULT_IO_CONCURRENCY = 8
# A worker whose model cannot load exits with this code and one line on stderr that starts with
# MODEL_LOAD_FAILED, which ``captionq up`` and ``captionq caption`` read back and show as is.
EXIT_MODEL_UNUSABLE = 2
MODEL_LOAD_FAILED = "error: cannot load the model"
# A worker whose engine process died exits at once with this code (its supervisor restarts it;
# the broker redelivers its unacknowledged jobs and the sweeper recovers those left running).
EXIT_ENGINE_DIED = 1


def model_load_failure(model: str, exc: BaseException) -> str:
    """The one line a worker prints when its model does not load (no traceback: the cause is a
    setting — a missing folder, an uncached hub id, a broken checkpoint — not a bug)."""
    reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{MODEL_LOAD_FAILED} {model}: {' '.join(str(reason).split())}"


def create_app(settings: Settings) -> Celery:
    """``make_celery(settings)`` plus this package's tasks."""
    app = make_celery(settings)
    if not settings.uses_local_broker:  # the fixes are to kombu's Redis transport
        broker_fixes.apply()
    app.conf.beat_schedule_filename = str(settings.data_dir / "beat-schedule")
    if settings.uses_local_broker:
        # kombu's filesystem transport has no fanout exchange for remote control.
        app.conf.worker_enable_remote_control = False
    tasks.register(app)
    return app


def app_from_env() -> Celery:
    """A worker app from the environment, for Celery's own tools (``worker.cli_app``)."""
    from core.settings import load_settings

    return create_app(load_settings())


def exit_on_engine_death(exitcode: int | None) -> None:
    """The engine process died: say so in one line and end this worker now, without a warm
    shutdown (its task threads could only fail their jobs; as after a crash, the jobs come back
    through the broker or the sweeper and count one more attempt)."""
    print(f"error: the engine process exited unexpectedly (code {exitcode}); the worker stops",
          file=sys.__stderr__, flush=True)
    logging.shutdown()
    os._exit(EXIT_ENGINE_DIED)


class LoadModel(bootsteps.StartStopStep):
    """Load the model in this process before the consumer takes any message (gpu queue only)."""

    label = "captionq-model"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.enabled = bool(getattr(parent.app, "captionq_serves_gpu", False))

    def start(self, parent: Any) -> None:
        rt = runtime.current()
        rt.on_engine_exit = exit_on_engine_death
        try:
            rt.load_model()
        except Exception as exc:
            # Celery logs any other exception here as a CRITICAL traceback and exits 1.
            # sys.__stderr__: Celery redirects sys.stderr into its logger, which would prefix the line.
            print(model_load_failure(rt.settings.model, exc), file=sys.__stderr__, flush=True)
            raise SystemExit(EXIT_MODEL_UNUSABLE) from None
        # Registered only once it can run jobs: /readyz counts live heartbeats as gpu capacity.
        worker_id = rt.start_heartbeat()
        # Log lines name the worker as GET /v1/workers does; /metrics exports the engine's stats.
        logcontext.set_process_fields(worker=worker_id)
        wmetrics.INFO.labels(worker_id, ",".join(getattr(parent.app, "captionq_queues", [])),
                             rt.engine_info.name).set(1)
        wmetrics.watch_engine(rt.engine_stats, lambda: rt.heartbeat.last if rt.heartbeat else None)
        # slots and KV budget as the engine counts them (what GET /v1/workers reports)
        info, cap, stats = rt.engine_info, rt.capacity(), rt.engine_stats()
        log.info(
            "gpu worker serving %s (%s, template %s) on %s as %s, %s attention; context %d tokens; "
            "capacity: %s batching, %d decode slots, KV budget %d tokens (batch wait %d ms), %d task "
            "threads, %d torch threads, GIL switch interval %.2f ms; engine %s", info.name,
            info.llm_family, info.template, info.device, info.dtype, info.attn_implementation,
            info.max_context, rt.settings.batch_mode, stats["slots"], stats["kv_budget_tokens"],
            cap["batch_wait_ms"], parent.concurrency, cap["torch_threads"], cap["gil_switch_interval_ms"],
            "in its own process" if cap["engine_process"] else "in this process",
        )


class ThreadedBeat(bootsteps.StartStopStep):
    """The periodic scheduler (sweeper) as a thread of this worker (``--beat``)."""

    label = "captionq-beat"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.enabled = bool(getattr(parent.app, "captionq_beat", False))
        self.service: Any = None

    def start(self, parent: Any) -> None:
        from celery.beat import EmbeddedService

        filename = parent.app.conf.beat_schedule_filename
        os.makedirs(os.path.dirname(filename) or ".", exist_ok=True)
        self.service = EmbeddedService(parent.app, thread=True, schedule_filename=filename)
        self.service.start()
        log.info("scheduler running: sweep every %.1f s (schedule file %s)",
                 parent.app.conf.beat_schedule["captionq-sweep"]["schedule"], filename)

    def stop(self, parent: Any) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None


def default_concurrency(settings: Settings, queues: list[str]) -> int:
    if QUEUE_GPU in queues:
        return 2 * (settings.batch_max_requests if settings.batching else 1) + (
            DEFAULT_IO_CONCURRENCY if len(queues) > 1 else 0)
    return DEFAULT_IO_CONCURRENCY


def consumed_queues(settings: Settings, queues: list[str]) -> list[str]:
    """The broker queues behind ``queues``: ``gpu`` stands for the queue(s) of the model this
    worker serves (``settings.worker_model``, see :func:`jobs.queue.gpu_queues`)."""
    out: list[str] = []
    for q in queues:
        out += gpu_queues(settings, settings.model_spec().name) if q == QUEUE_GPU else [q]
    return list(dict.fromkeys(out))


class CeleryTaskFields(logging.Filter):
    """Celery's own lines about a caption task ("Task captionq.caption_job[job_…] received",
    "… succeeded in 1.2s") are logged outside the task's code (the consumer thread, the pool
    after the task returned): bind the job id they are about, from the context Celery passes
    along (``extra={"data": {"id", "name", …}}``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        if isinstance(data, dict) and data.get("name") == TASK_CAPTION and not hasattr(record, "job_id"):
            record.job_id = str(data.get("id"))
        return True


def sends_task_events(settings: Settings, queues: list[str]) -> bool:
    """Whether this worker sends Celery task events (for Flower): see ``Settings.task_events``.
    Never on the local broker (its filesystem transport has no fanout exchange)."""
    if settings.uses_local_broker or settings.task_events == "off":
        return False
    return settings.task_events == "all" or QUEUE_IO in queues


def run_worker(settings: Settings, queues: list[str], concurrency: int | None, beat: bool,
               loglevel: str | None, model: str | None = None) -> None:
    """Run a Celery worker on ``queues`` until it is shut down (SIGTERM/SIGINT: warm shutdown).
    With the gpu queue it serves registry model ``model`` (default ``settings.worker_model``,
    else the default model): its checkpoint and limits, and only its queue."""
    from celery import signals

    from core import tracing
    from core.logging import add_filter, setup_logging

    if loglevel:
        settings = settings.model_copy(update={"log_level": loglevel.upper()})
    serves_gpu = QUEUE_GPU in queues
    if serves_gpu:
        settings = settings.for_model(model)
    setup_logging(settings)
    add_filter(CeleryTaskFields())
    tracing.setup("captionq-worker")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    app.captionq_serves_gpu = serves_gpu  # type: ignore[attr-defined]
    app.captionq_beat = beat  # type: ignore[attr-defined]
    app.conf.worker_send_task_events = sends_task_events(settings, queues)
    app.steps["worker"].add(LoadModel)
    app.steps["worker"].add(ThreadedBeat)
    rt = runtime.configure(settings, celery_app=app)
    threads = concurrency or default_concurrency(settings, queues)
    queues = consumed_queues(settings, queues)
    app.captionq_queues = queues  # type: ignore[attr-defined]
    hostname = f"captionq-{'-'.join(queues)}-{os.getpid()}@{socket.gethostname()}"
    logcontext.set_process_fields(worker=hostname)
    if not serves_gpu:
        wmetrics.INFO.labels(hostname, ",".join(queues), "").set(1)
    health = probe.HealthState(queues, details=lambda: {
        "worker": logcontext.bound().get("worker"),
        **({"model_loaded": rt.model_loaded} if serves_gpu else {})})
    signals.worker_ready.connect(lambda **_: setattr(health, "phase", "ok"), weak=False)
    signals.worker_shutting_down.connect(lambda **_: setattr(health, "phase", "stopping"), weak=False)
    servers = probe.start(metrics_port=settings.worker_metrics_port, health_port=settings.worker_health_port,
                          host=settings.worker_probe_host, registry=wmetrics.REGISTRY, health=health)
    log.info("captionq worker: queues %s, %d task threads%s%s%s", ",".join(queues), threads,
             f", model {settings.worker_model} ({settings.model}) on {settings.device}" if serves_gpu else "",
             ", with the scheduler" if beat else "",
             ", sending task events" if app.conf.worker_send_task_events else "")
    worker = app.Worker(
        hostname=hostname,
        queues=queues, pool_cls="threads", concurrency=threads, loglevel=settings.log_level.upper(),
        without_mingle=True, without_gossip=True, optimization="fair",
    )
    try:
        worker.start()
    finally:
        health.phase = "stopping"
        runtime.shutdown()
        for server in servers:
            server.close()
    code = getattr(worker, "exitcode", 0) or 0
    if code:
        raise SystemExit(code)
