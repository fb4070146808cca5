"""A few threads of their own for webhook attempts in a worker that also runs caption jobs.

Why: Celery's ``threads`` pool has one set of task threads for every queue the worker consumes.
In a ``--queues gpu,io`` worker (the default, and local mode) a receiver that hangs until the
attempt timeout would hold one task thread per message, and a few dozen such messages take every
thread the caption jobs need (measured: four text jobs took 3.3 s instead of 0.3 s behind 200
hanging webhooks). So there the task only hands the attempt to this pool and returns at once; at
most ``THREADS`` attempts run at a time, at most ``BACKLOG`` wait.

Nothing is lost by handing off: an attempt is claimed only when a pool thread runs it, so a
message waiting here (or dropped because the backlog is full, or lost with the process) is still
``pending`` and due in the database, and the sweeper wakes it up again.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

THREADS = 4
BACKLOG = 1000


class SendPool:
    def __init__(self, threads: int = THREADS, backlog: int = BACKLOG) -> None:
        self._queue: queue.Queue[Callable[[], object]] = queue.Queue(maxsize=backlog)
        self._threads = threads
        self._started = False
        self._lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for i in range(self._threads):
                threading.Thread(target=self._loop, name=f"webhook-send-{i}", daemon=True).start()
            self._started = True

    def _loop(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                fn()
            except Exception:  # a database error: the message stays due, the sweeper retries it
                log.exception("webhook attempt failed in the send pool")
            finally:
                self._queue.task_done()

    def offer(self, fn: Callable[[], object]) -> bool:
        """Queue ``fn``; False (and nothing queued) when the backlog is full."""
        self._start()
        try:
            self._queue.put_nowait(fn)
        except queue.Full:
            return False
        return True

    def backlog(self) -> int:
        return self._queue.qsize()


_pool: SendPool | None = None
_pool_lock = threading.Lock()


def shared() -> SendPool:
    """This process's pool (made on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = SendPool()
        return _pool
