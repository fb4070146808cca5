"""The worker's cancel announcements against a real Redis: an announced cancel stops the job's
watch (also when it arrived just before the job registered); other jobs are left alone."""

from __future__ import annotations

import threading
import time

import redis

from jobs.live import CANCEL_CHANNEL
from worker.cancels import CancelListener


class FakeWatch:
    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.reasons: list[str] = []

    def stop(self, reason: str) -> None:
        self.reasons.append(reason)
        self.stopped.set()


def test_announced_cancel_stops_the_registered_job(redis_url: str) -> None:
    listener = CancelListener(redis_url)
    r = redis.Redis.from_url(redis_url)
    try:
        assert listener.wait_connected(5) and listener.connected
        mine, other = FakeWatch(), FakeWatch()
        listener.register("job_a", mine)
        listener.register("job_b", other)
        r.publish(CANCEL_CHANNEL, "job_a")
        assert mine.stopped.wait(5) and mine.reasons == ["cancel"]
        time.sleep(0.1)
        assert not other.stopped.is_set()
        # Announced before the job registered here (between its claim and its watch): stops at once.
        r.publish(CANCEL_CHANNEL, "job_c")
        time.sleep(0.3)
        late = FakeWatch()
        listener.register("job_c", late)
        assert late.stopped.is_set()
        # A finished job is forgotten.
        listener.unregister("job_b")
        r.publish(CANCEL_CHANNEL, "job_b")
        time.sleep(0.3)
        assert not other.stopped.is_set()
    finally:
        listener.close()
        r.close()


def test_without_redis_the_listener_reports_no_connection() -> None:
    listener = CancelListener("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        assert not listener.wait_connected(1.5) and not listener.connected
    finally:
        listener.close()
