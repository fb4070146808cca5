"""Fields bound to every log line of a job's path: ``job_id``, ``batch_id``, ``tenant_id``,
``worker`` (and the current ``trace_id`` when tracing records one).

Context variables, so they follow the code that runs a job (an API request's task and the threads
it hands work to, a worker's task thread) without passing them around; :func:`bind` sets them for
a block and restores what was there after, so a task thread that runs the next job starts clean.
:class:`ContextFilter`, installed on captionq's log handler, copies them onto each record.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager

FIELDS = ("job_id", "batch_id", "tenant_id", "worker")
_VARS: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"captionq_log_{name}", default=None) for name in FIELDS
}


@contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Bind ``fields`` (names from :data:`FIELDS`; None values are skipped) for the block."""
    tokens = [(_VARS[k], _VARS[k].set(v)) for k, v in fields.items() if v is not None]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


_PROCESS: dict[str, str] = {}


def set_fields(**fields: str | None) -> None:
    """Bind for the rest of the current context (an API request's task: its tenant)."""
    for k, v in fields.items():
        if v is not None:
            _VARS[k].set(v)


def set_process_fields(**fields: str | None) -> None:
    """Defaults for every thread of this process (``worker``: a worker's name, for its whole
    life; task threads do not inherit the main thread's context)."""
    _PROCESS.update({k: v for k, v in fields.items() if v is not None})


def bound() -> dict[str, str]:
    out = dict(_PROCESS)
    out.update({k: v for k, var in _VARS.items() if (v := var.get()) is not None})
    return out


class ContextFilter(logging.Filter):
    """Adds the bound fields (and ``trace_id``) to a record, unless it already has them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in bound().items():
            if not hasattr(record, k):
                setattr(record, k, v)
        if not hasattr(record, "trace_id"):
            from core.tracing import trace_id

            tid = trace_id()
            if tid is not None:
                record.trace_id = tid
        return True
