"""Prometheus plumbing shared by the API and the worker: multiprocess mode and scrape registries.

``captionq serve --workers N`` runs N uvicorn processes behind one port; a scrape reaches one of
them. With ``prometheus_client``'s multiprocess mode every process writes its counters and
histograms to memory-mapped files in one folder (``PROMETHEUS_MULTIPROC_DIR``) and whichever
process answers a scrape sums them all, so every request is counted once however many processes
served them. :func:`use_multiprocess_dir` makes that folder (a fresh one per ``serve``, or the
operator's own, emptied) and switches this process to it before any metric exists; child
processes inherit the variable and start in the same mode.

Gauges computed from the database or the broker at scrape time (jobs by status, queue depth)
are not per process: they are added to the scrape registry by :func:`scrape_registry`, so the
process that answers computes them once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, values
from prometheus_client.registry import Collector

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets (seconds) shared by the HTTP and worker stage histograms.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def multiprocess_dir() -> Path | None:
    value = os.environ.get(ENV) or os.environ.get(ENV.lower())
    return Path(value) if value else None


def use_multiprocess_dir(path: Path | None = None) -> Path:
    """Put this process (and the processes it starts) in multiprocess mode, writing to ``path``
    (the operator's ``PROMETHEUS_MULTIPROC_DIR`` if set, else a new temporary folder). Files of
    an earlier run there are removed: their counts belong to processes that no longer exist.
    Call before any metric is created."""
    path = path or multiprocess_dir() or Path(tempfile.mkdtemp(prefix="captionq-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[ENV] = str(path)
    # prometheus_client picks its value class when it is first imported; a metric made from now
    # on reads it here, so the switch holds even if the module was imported before.
    values.ValueClass = values.MultiProcessValue()
    return path


def remove_multiprocess_dir(path: Path) -> None:
    """Delete a folder :func:`use_multiprocess_dir` created (at the end of ``serve``)."""
    shutil.rmtree(path, ignore_errors=True)


def in_multiprocess_mode() -> bool:
    return multiprocess_dir() is not None and values.ValueClass is not values.MutexValue


def scrape_registry(own: CollectorRegistry | None, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """The registry one scrape renders: every process's metrics (multiprocess mode) or ``own``
    (one process), plus the ``extra`` collectors computed at scrape time."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    if in_multiprocess_mode():
        multiprocess.MultiProcessCollector(registry)
    elif own is not None:
        registry.register(_View(own))
    for collector in extra:
        registry.register(collector)
    return registry


class _View(Collector):
    """One process's own registry inside the scrape registry (its collectors stay registered
    there only)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):  # type: ignore[no-untyped-def]
        return self.registry.collect()
