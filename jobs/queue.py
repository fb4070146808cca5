"""The Celery client configuration (shared with the worker) and the outbox publisher.

The API and the sweeper only *send* messages; the worker package defines the tasks on an app made
by the same :func:`make_celery`, so both sides agree on broker, serializer, queues and priorities.

Routing: a caption message goes to its model's queue, ``gpu.<model>`` (:func:`caption_queue`, the
one place that decides), at publish time; a GPU worker consumes only the queue of the model it
loaded. Plain ``gpu`` is the queue of jobs stored before jobs named a model, which the default
model's workers also consume.

Priorities: the API's ``priority`` is 0..9, higher first. Redis (kombu) serves priority step 0
first, so the message carries ``9 - priority`` there. The local filesystem broker has no
priorities (FIFO).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import ChannelError

from core.settings import Settings

log = logging.getLogger(__name__)

TASK_CAPTION = "captionq.caption_job"  # args [job_id], queue gpu.<model>, task_id = job id
TASK_WEBHOOK = "captionq.deliver_webhook"  # args [message_id], queue io, task_id = message id
TASK_FINALIZE = "captionq.finalize_batch"  # args [batch_id], queue io
TASK_SWEEP = "captionq.sweep"  # no args, queue io, from beat
TASK_EXPORT = "captionq.export_batch_parts"  # args [batch_id], queue io: write the finished output parts

QUEUE_GPU = "gpu"
QUEUE_IO = "io"
PRIORITY_STEPS = list(range(10))


def caption_queue(model: str | None) -> str:
    """The broker queue of a caption job for ``model`` (a registry name; None: a job stored
    before jobs named their model, served by the default model's workers)."""
    return f"{QUEUE_GPU}.{model}" if model else QUEUE_GPU


def queue_model(queue: str) -> str | None:
    """The model whose caption jobs ``queue`` carries: the inverse of :func:`caption_queue`."""
    return queue[len(QUEUE_GPU) + 1:] if queue.startswith(f"{QUEUE_GPU}.") else None


def gpu_queues(settings: Settings, model: str) -> list[str]:
    """The queues a GPU worker serving ``model`` consumes: its own, and the legacy ``gpu`` queue
    when it is the default model."""
    own = [caption_queue(model)]
    return [*own, QUEUE_GPU] if model == settings.registry.default else own


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.effective_broker_url
    if url.startswith("filesystem://"):
        d = settings.broker_dir
        # Producer writes to data_folder_out, consumers read data_folder_in: one shared folder.
        for sub in ("in", "out", "processed", "control"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(d / "out"), "data_folder_out": str(d / "out"),
            "processed_folder": str(d / "processed"), "control_folder": str(d / "control"),
            "store_processed": False,
        }
    if url.startswith(("redis://", "rediss://", "sentinel://")):
        return {
            "priority_steps": PRIORITY_STEPS,
            "sep": ":",
            "queue_order_strategy": "priority",
            # A message taken by a worker comes back only after this long without an ack; it must
            # outlast the longest job, or a slow job would be delivered twice.
            "visibility_timeout": max(3600, 2 * settings.job_hard_time_limit + 600),
        }
    return {}


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for captionq; the worker adds its tasks to one made here."""
    app = Celery("captionq", broker=settings.effective_broker_url, set_as_current=False)
    default_exchange = Exchange("captionq", type="direct")
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_always_eager=False,
        # Every served model's queue is declared alike on both sides (publisher and worker).
        task_queues=tuple(
            Queue(name, default_exchange, routing_key=name)
            for name in (QUEUE_GPU, QUEUE_IO, *(caption_queue(m) for m in settings.registry.names))
        ),
        task_default_queue=QUEUE_IO,
        task_default_exchange="captionq",
        task_default_routing_key=QUEUE_IO,
        task_routes={
            TASK_CAPTION: {"queue": QUEUE_GPU, "routing_key": QUEUE_GPU},
            TASK_WEBHOOK: {"queue": QUEUE_IO, "routing_key": QUEUE_IO},
            TASK_FINALIZE: {"queue": QUEUE_IO, "routing_key": QUEUE_IO},
            TASK_EXPORT: {"queue": QUEUE_IO, "routing_key": QUEUE_IO},
            TASK_SWEEP: {"queue": QUEUE_IO, "routing_key": QUEUE_IO},
        },
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_hard_time_limit,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        broker_pool_limit=10,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "captionq-sweep": {
                "task": TASK_SWEEP, "schedule": settings.sweep_interval_seconds,
                "options": {"queue": QUEUE_IO, "expires": settings.sweep_interval_seconds * 2},
            },
        },
    )
    return app


def is_redis(settings: Settings) -> bool:
    return settings.effective_broker_url.startswith(("redis://", "rediss://", "sentinel://"))


@dataclass(frozen=True)
class Message:
    """One Celery message to send (an outbox row, detached from its session)."""

    task: str
    args: list[Any]
    queue: str
    task_id: str
    priority: int = 0  # API scale: 0..9, higher first
    outbox_id: int | None = None


class Publisher:
    """Sends messages with ``send_task(name, args, queue, task_id, priority)``.

    Many messages go through one producer in a pipelined batch (one Redis round trip per chunk),
    which is how a 100,000-job batch is enqueued in seconds. It has its own small connection pool
    that fails fast (one quick retry, 2 s connect timeout): when the broker is down the caller
    leaves the outbox rows for the sweeper instead of hanging a request. Errors propagate.
    """

    FAIL_FAST: ClassVar[dict[str, float]] = {
        "max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2,
    }

    def __init__(self, app: Celery, *, redis_priorities: bool, pool_size: int = 16,
                 connect_timeout: float = 2.0) -> None:
        self.app = app
        self.redis_priorities = redis_priorities
        self._conn = app.connection_for_write(transport_options=dict(self.FAIL_FAST),
                                              connect_timeout=connect_timeout)
        self._pool = self._conn.Pool(limit=pool_size)
        self._templates: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, app: Celery | None = None) -> Publisher:
        return cls(app or make_celery(settings), redis_priorities=is_redis(settings))

    def broker_priority(self, priority: int) -> int:
        p = min(9, max(0, int(priority)))
        return 9 - p if self.redis_priorities else p

    def _send(self, m: Message, producer: Any) -> None:
        self.app.send_task(
            m.task, args=m.args, queue=m.queue, task_id=m.task_id,
            priority=self.broker_priority(m.priority), producer=producer, retry=False,
        )

    def send(self, m: Message) -> None:
        self.send_many([m])

    def send_many(self, messages: Sequence[Message], chunk: int = 1000) -> None:
        """Send all of ``messages``. Raises on failure.

        A few messages go through ``send_task`` (on Redis: the template path below, one by one).
        Many (a batch dispatch) are built from a per-task
        template that Celery's own ``amqp.as_task_v2`` made (so the wire format is Celery's
        protocol 2, byte for byte but the per-message fields), and published through one producer
        in pipelined chunks: Celery's per-call routing and repr work dominates otherwise
        (~6x slower).
        """
        if not messages:
            return
        with self._pool.acquire(block=True, timeout=30) as conn:
            try:
                producer = conn.Producer(auto_declare=False)
                if len(messages) <= self.FEW or getattr(producer, "batch", None) is None:
                    for m in messages:
                        # On Redis the template path for single messages too (~0.15 ms less per
                        # submitted job); other transports keep send_task's own routing.
                        if self.redis_priorities:
                            self._publish_fast(m, producer)
                        else:
                            self._send(m, producer)
                    return
                for start in range(0, len(messages), chunk):
                    with producer.batch(max_size=chunk + 1):
                        for m in messages[start : start + chunk]:
                            self._publish_fast(m, producer)
            except Exception:
                conn.collect()  # drop a broken connection; the pool reconnects next time
                raise

    FEW = 8
    _EMBED: ClassVar[dict[str, None]] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

    def _publish_fast(self, m: Message, producer: Any) -> None:
        template = self._templates.get(m.task)
        if template is None:
            template = dict(self.app.amqp.as_task_v2("template", m.task, args=[], kwargs={}).headers)
            template["ignore_result"] = None  # what send_task puts there for our tasks
            self._templates[m.task] = template
        headers = dict(template)
        headers["id"] = headers["root_id"] = m.task_id
        headers["argsrepr"] = repr(m.args)
        producer.publish(
            (m.args, {}, self._EMBED), exchange="", routing_key=m.queue, serializer="json", headers=headers,
            correlation_id=m.task_id, reply_to=self.app.thread_oid, priority=self.broker_priority(m.priority),
            retry=False,
        )

    def check(self, timeout: float = 2.0) -> None:
        """Raise unless the broker answers (for ``/readyz``)."""
        with self._pool.acquire(block=True, timeout=timeout) as conn:
            try:
                conn.ensure_connection(max_retries=1, timeout=timeout)
                if conn.transport_cls in ("redis", "rediss"):
                    conn.default_channel.client.ping()
            except Exception:
                conn.collect()
                raise

    def ready_count(self, queue: str, timeout: float = 2.0) -> int | None:
        """Messages waiting in ``queue`` (every priority level; not those a worker has taken),
        or None when the transport cannot say."""
        try:
            with self._pool.acquire(block=True, timeout=timeout) as conn:
                try:
                    ok = conn.default_channel.queue_declare(queue=queue, passive=True)
                    return int(ok.message_count)
                except ChannelError as exc:
                    if "NOT_FOUND" in str(exc):  # Redis keeps no key for an empty queue
                        return 0
                    conn.collect()
                    raise
                except Exception:
                    conn.collect()
                    raise
        except Exception as exc:
            log.debug("cannot count the messages in %s: %s", queue, exc)
            return None

    def close(self) -> None:
        self._pool.force_close_all()
        self._conn.release()
        self.app.close()


def chunked(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    buf: list[Any] = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf
