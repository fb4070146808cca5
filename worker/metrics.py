"""A worker's Prometheus metrics (``captionq worker --metrics-port``).

One worker is one process (Celery's threads pool; an engine process reports its counters back,
:mod:`worker.engine_client`), so its metrics live in one registry of its own:

- jobs started and finished by outcome, and the time of each stage (queue wait, prepare,
  engine, the whole job) as histograms — counted by :mod:`worker.pipeline`;
- webhook attempts by outcome and their duration — counted by :mod:`worker.webhooks.delivery`;
- the engine: its counters since start (batches, requests, tokens, decoding steps and the rows
  they ran: ``rate(rows_stepped) / rate(decode_steps)`` is the mean batch size), the rows running
  now, KV positions in use and their share of the budget, accelerator memory, and tokens/s and
  batch occupancy over the last heartbeat interval — read from the runtime at scrape time.

Fleet-wide numbers (queue depth, jobs by status) come from the API's ``/metrics``, not from
here: every worker would report the same values and a sum over workers would count them twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from core.prometheus import BUCKETS

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

INFO = Gauge("captionq_worker_info", "This worker: its queues and model (value 1)",
             ["worker", "queues", "model"], registry=REGISTRY)
JOBS_STARTED = Counter("captionq_worker_jobs_started", "Caption jobs this worker claimed", registry=REGISTRY)
JOBS_FINISHED = Counter(
    "captionq_worker_jobs_finished",
    "Caption job deliveries by outcome: succeeded, failed, canceled, queued (requeued), retry "
    "(sent back to the broker), stopped (changed meanwhile), skipped (nothing to run)",
    ["outcome"], registry=REGISTRY)
QUEUE_WAIT = Histogram("captionq_worker_queue_wait_seconds", "From submission to this worker's claim",
                       buckets=BUCKETS, registry=REGISTRY)
PREPARE = Histogram("captionq_worker_prepare_seconds", "Media download, decoding and tiling per job",
                    buckets=BUCKETS, registry=REGISTRY)
ENGINE = Histogram("captionq_worker_engine_seconds", "Time in the engine per job (all rounds)",
                   buckets=BUCKETS, registry=REGISTRY)
JOB = Histogram("captionq_worker_job_seconds", "From claim to recorded outcome per job", buckets=BUCKETS,
                registry=REGISTRY)
WEBHOOK_ATTEMPTS = Counter("captionq_webhook_attempts",
                           "Webhook attempts by outcome: delivered, retrying, failed (given up)",
                           ["outcome"], registry=REGISTRY)
WEBHOOK_SECONDS = Histogram("captionq_webhook_attempt_seconds", "Webhook attempt duration",
                            buckets=BUCKETS, registry=REGISTRY)

# BatcherStats fields exported as counters (since the engine started) and as gauges (now).
_COUNTERS = {
    "batches": "Batches the engine formed (continuous: admissions of new requests)",
    "requests": "Requests the engine finished",
    "tokens_generated": "Tokens generated",
    "decode_steps": "Decoding steps",
    "rows_stepped": "Rows run over all decoding steps (rows_stepped / decode_steps: mean batch size)",
    "busy_seconds": "Time spent running the model",
    "prefill_seconds": "Of which prompts of joining requests (continuous batching)",
    "oom_splits": "Batches split in halves after running out of memory",
}
_GAUGES = {
    "slots": "Decode rows the engine runs at most at once",
    "kv_budget_tokens": "KV-cache positions the engine may hold at once",
    "largest_batch": "Largest batch so far",
    "running_rows": "Rows being decoded now (the current batch size)",
    "kv_tokens_in_use": "KV-cache positions the running rows hold",
    "gpu_memory_allocated_bytes": "Accelerator memory allocated by torch (0 on the CPU)",
    "gpu_memory_reserved_bytes": "Accelerator memory reserved by torch's allocator (0 on the CPU)",
}


class EngineCollector(Collector):
    """The engine's statistics at scrape time: ``stats()`` gives ``BatcherStats`` as a dict and
    ``rates()`` the heartbeat's last rates (or None before the model has loaded)."""

    def __init__(self, stats: Callable[[], dict[str, Any] | None],
                 rates: Callable[[], dict[str, Any] | None]) -> None:
        self.stats = stats
        self.rates = rates

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        try:
            stats = self.stats()
        except Exception as exc:
            log.debug("engine stats unavailable: %s", exc)
            stats = None
        if not stats:
            return
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(f"captionq_engine_{name}", doc, value=float(stats.get(name) or 0))
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(f"captionq_engine_{name}", doc, value=float(stats.get(name) or 0))
        budget = stats.get("kv_budget_tokens") or 0
        yield GaugeMetricFamily("captionq_engine_kv_occupancy", "KV positions in use / KV budget (0..1)",
                                value=(stats.get("kv_tokens_in_use") or 0) / budget if budget else 0.0)
        rates = self.rates() or {}
        for name, doc in (("tokens_per_s", "Tokens per second over the last heartbeat interval"),
                          ("batch_occupancy", "Mean rows per decoding step / slots over the last interval"),
                          ("busy_fraction", "Share of the last interval spent running the model")):
            if rates.get(name) is not None:
                yield GaugeMetricFamily(f"captionq_engine_{name}", doc, value=float(rates[name]))


_engine_collector: EngineCollector | None = None


def watch_engine(stats: Callable[[], dict[str, Any] | None],
                 rates: Callable[[], dict[str, Any] | None]) -> None:
    """Export the engine's statistics (a gpu worker, once its model is loaded)."""
    global _engine_collector
    if _engine_collector is None:
        _engine_collector = EngineCollector(stats, rates)
        REGISTRY.register(_engine_collector)


def job_finished(outcome: str) -> None:
    JOBS_FINISHED.labels(outcome).inc()
