from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from core.settings import Settings
from worker.webhooks.schedule import RetryPolicy, jittered, next_delay, parse_retry_after

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_default_schedule_from_settings() -> None:
    policy = RetryPolicy.from_settings(Settings())
    assert policy.schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert policy.max_attempts == 8
    assert policy.retry_after_cap == 36000


def test_schedule_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTIONQ_WEBHOOK_RETRY_SCHEDULE", "0.2, 0.5,1")
    policy = RetryPolicy.from_settings(Settings())
    assert policy.schedule == (0.2, 0.5, 1.0)
    assert policy.max_attempts == 4


def test_waits_follow_schedule_then_give_up() -> None:
    policy = RetryPolicy((5, 300, 1800), jitter=0)
    assert [next_delay(policy, n, rand=0.5) for n in (1, 2, 3)] == [5, 300, 1800]
    assert next_delay(policy, 4, rand=0.5) is None
    assert next_delay(policy, 9, rand=0.5) is None  # after a manual redelivery, too


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999])
def test_jitter_stays_within_bounds(rand: float) -> None:
    policy = RetryPolicy((100,), jitter=0.1)
    d = next_delay(policy, 1, rand=rand)
    assert d is not None and 90 <= d <= 110
    assert jittered(0, 0.1, rand) == 0


def test_jitter_spreads_retries() -> None:
    policy = RetryPolicy((300,))
    delays = {next_delay(policy, 1, rand=r / 10) for r in range(10)}
    assert len(delays) == 10


def test_retry_after_lengthens_never_shortens_and_is_capped() -> None:
    policy = RetryPolicy((5, 300, 1800), jitter=0)
    assert next_delay(policy, 1, rand=0.5, retry_after=60) == 60
    assert next_delay(policy, 2, rand=0.5, retry_after=1) == 300
    assert next_delay(policy, 1, rand=0.5, retry_after=10**9) == 1800
    assert next_delay(policy, 4, rand=0.5, retry_after=60) is None


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after(" 0 ", NOW) == 0
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, NOW) == pytest.approx(90)
    earlier = format_datetime(NOW - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", NOW) == 0
    for junk in (None, "", "soon", "-5", "1.5e3"):
        assert parse_retry_after(junk, NOW) is None


def test_invalid_policy() -> None:
    with pytest.raises(ValueError):
        RetryPolicy((-1,))
    with pytest.raises(ValueError):
        RetryPolicy((1,), jitter=1.5)
