"""Logging setup, called once by each entry point (serve, worker, up, CLI commands).

Plain ``time level logger: message`` lines by default (bound fields appended as ``key=value``);
one JSON object per line with ``CAPTIONQ_LOG_JSON=true`` (for log shippers), with the fields
:mod:`core.logcontext` binds on a job's path (``job_id``, ``batch_id``, ``tenant_id``, ``worker``,
``trace_id``) as keys. Every line is passed through :func:`core.redact.redact`: keys and secrets
never reach the output. Idempotent: calling it again replaces our handler.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from core.logcontext import FIELDS, ContextFilter
from core.redact import redact
from core.settings import Settings

_HANDLER_NAME = "captionq"
_STD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in vars(record).items():  # extra={...} fields
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v if isinstance(v, str | int | float | bool | type(None)) else repr(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``time level logger: message`` and the bound fields as ``key=value``, redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        bound = [f"{k}={getattr(record, k)}" for k in (*FIELDS, "trace_id") if hasattr(record, k)]
        if bound:
            head, sep, tail = line.partition("\n")  # after the message, before a traceback
            line = f"{head} [{' '.join(bound)}]{sep}{tail}"
        return redact(line)


def add_filter(f: logging.Filter) -> None:
    """Add a filter to captionq's handler (set up by :func:`setup_logging`)."""
    for h in logging.getLogger().handlers:
        if h.get_name() == _HANDLER_NAME:
            h.addFilter(f)


def setup_logging(settings: Settings) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER_NAME:
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Chatty libraries stay at WARNING unless we debug.
    if settings.log_level.upper() != "DEBUG":
        for name in ("sqlalchemy.engine", "botocore", "urllib3", "httpx", "httpcore", "kombu", "amqp"):
            logging.getLogger(name).setLevel(logging.WARNING)
