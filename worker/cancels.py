"""Cancels pushed to the worker: one Redis subscription per worker process.

``POST /v1/jobs/{id}/cancel`` on a running job sets ``cancel_requested`` in SQL (the truth) and
then announces the id on :data:`jobs.live.CANCEL_CHANNEL`. The worker process listens on that
channel with one thread; when the id belongs to a job it runs, that job's :class:`JobWatch` stops,
and the engine drops the request at its next decoding step — instead of at the job's next
database poll. The polls stay, less often (:data:`POLL_WITH_PUSH`), for a cancel whose
announcement was lost (Redis down at that moment, the listener reconnecting): a lost message
delays a cancel, it never loses one. What is recorded is still decided from SQL (the pipeline
reads ``cancel_requested`` before marking the job canceled).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from jobs.live import CANCEL_CHANNEL

log = logging.getLogger(__name__)

POLL_WITH_PUSH = 5.0  # seconds between a running job's cancel polls while pushes arrive
RECONNECT_SECONDS = 1.0
RECENT_SECONDS = 30.0  # an announcement for a job not (yet) registered here is kept this long


class CancelListener:
    def __init__(self, redis_url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2.0,
                                           client_name="captionq-worker-cancels")
        self._watches: dict[str, Any] = {}
        # Announced ids with no watch yet: a cancel can arrive between the claim's commit and
        # the job's registration; register() looks here.
        self._recent: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cancel-listener", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        """True while the subscription is up (pushes arrive): watches may poll less often."""
        return self._subscribed.is_set()

    def register(self, job_id: str, watch: Any) -> None:
        """``watch.stop("cancel")`` runs when a cancel for ``job_id`` is announced (at once if
        it was announced a moment before)."""
        with self._lock:
            self._watches[job_id] = watch
            announced = self._recent.pop(job_id, None) is not None
        if announced:
            watch.stop("cancel")

    def unregister(self, job_id: str) -> None:
        with self._lock:
            self._watches.pop(job_id, None)

    def wait_connected(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self.client.close()

    def _deliver(self, job_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            watch = self._watches.get(job_id)
            if watch is None:
                self._recent = {k: t for k, t in self._recent.items() if now - t < RECENT_SECONDS}
                self._recent[job_id] = now
        if watch is not None:
            log.info("job %s: cancel announced; stopping at the next step", job_id)
            watch.stop("cancel")

    def _loop(self) -> None:
        while not self._closed.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CANCEL_CHANNEL)
                while not self._closed.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    if msg is None:
                        if pubsub.subscribed:
                            self._subscribed.set()
                        continue
                    if msg.get("type") == "message":
                        data = msg["data"]
                        self._deliver(data.decode() if isinstance(data, bytes) else str(data))
            except Exception as exc:
                if not self._closed.is_set():
                    log.warning("cancel announcements unavailable (polling the database meanwhile): %s", exc)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    pubsub.close()
            self._closed.wait(RECONNECT_SECONDS)
