"""When to try a webhook message again. Pure: no clock, no randomness of its own.

The schedule (``CAPTIONQ_WEBHOOK_RETRY_SCHEDULE``, default ``5,300,1800,7200,18000,36000,36000``)
lists the waits *between* attempts: the first attempt goes out at once, attempt n+1 follows a
failed attempt n after ``schedule[n-1]`` seconds (± jitter), and a message whose attempt
``len(schedule) + 1`` fails is given up (marked ``failed``).

Jitter spreads the retries of many messages that failed together (a receiver outage) so they do
not all come back in the same second. ``Retry-After`` from the receiver can lengthen a wait, never
shorten it below the schedule (we don't let a receiver make us hammer it), and is capped at the
schedule's longest interval (a receiver can't park a message for a year).
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DEFAULT_JITTER = 0.1


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...]
    jitter: float = DEFAULT_JITTER  # fraction of the wait, both ways
    retry_after_max: float | None = None  # None: the schedule's longest interval

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", tuple(float(s) for s in self.schedule))
        if any(s < 0 for s in self.schedule):
            raise ValueError("retry waits must be >= 0")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        return cls(schedule=tuple(settings.webhook_schedule_seconds))

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    @property
    def retry_after_cap(self) -> float:
        if self.retry_after_max is not None:
            return self.retry_after_max
        return max(self.schedule, default=0.0)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks us to wait, or None when absent or unreadable.

    RFC 9110 allows delay-seconds (``120``) or an HTTP-date; a date in the past means 0.
    """
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    if v.isdigit():
        return float(int(v))
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 850 / asctime forms are GMT by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def jittered(wait: float, jitter: float, rand: float) -> float:
    """``wait`` moved by up to ±``jitter`` of itself; ``rand`` is uniform in [0, 1)."""
    return max(0.0, wait * (1.0 + jitter * (2.0 * rand - 1.0)))


def next_delay(
    policy: RetryPolicy, attempts_made: int, *, rand: float, retry_after: float | None = None
) -> float | None:
    """Seconds to wait before the next attempt after ``attempts_made`` attempts all failed, or None
    when the message is out of attempts and must be marked failed."""
    if attempts_made < 1:
        return 0.0
    if attempts_made >= policy.max_attempts:
        return None
    wait = jittered(policy.schedule[attempts_made - 1], policy.jitter, rand)
    if retry_after is not None:
        wait = max(wait, min(max(retry_after, 0.0), policy.retry_after_cap))
    return wait

