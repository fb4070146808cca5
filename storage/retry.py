"""Retries for transient failures: exponential backoff with jitter, bounded by the config."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from storage.config import StorageConfig
from storage.errors import TransientError

T = TypeVar("T")


def backoff_delay(attempt: int, config: StorageConfig, retry_after: float | None = None) -> float:
    """Delay before retry number ``attempt`` (0-based): "equal jitter" (half fixed, half random)
    so retries spread out but never collapse to zero. A server's Retry-After is honoured up to
    ``retry_backoff_max``."""
    cap = min(config.retry_backoff_max, config.retry_backoff * (2**attempt))
    delay = cap / 2 + random.uniform(0, cap / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, config.retry_backoff_max))
    return delay


def call_with_retries(
    fn: Callable[[], T], config: StorageConfig, *, what: str, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Call ``fn``; on :class:`TransientError` try again up to ``config.retries`` more times.
    Every other error goes straight through. The final TransientError says how many attempts ran."""
    attempts = config.retries + 1
    for i in range(attempts):
        try:
            return fn()
        except TransientError as e:
            if i == attempts - 1:
                raise TransientError(f"{e.message} ({what}, {attempts} attempts)") from e
            sleep(backoff_delay(i, config, e.retry_after))
    raise AssertionError("unreachable")
