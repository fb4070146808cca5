"""Deleting published outbox rows off the request path, many per statement.

Once a message is in the broker its outbox row is only a reminder for the sweeper, and removing
it is bookkeeping: if the row outlives its message (the process dies first), the sweeper sends
the message once more after ``outbox_grace_seconds``, which every consumer tolerates (claims,
webhook deliveries and batch finalisation are conditional). So the API and the worker hand the
ids of published rows to an :class:`OutboxCleaner` instead of running a third transaction before
answering: a ``POST /v1/jobs`` returns as soon as its message is in the broker, and under load
one ``DELETE … WHERE id IN (…)`` clears the rows of many requests.

The cleaner's thread waits ``linger`` seconds after the first id arrives, so that on a quiet
service the delete runs after the job's own hot path (the worker's claim starts right after the
publish and shares the CPU), and on a busy one it gathers everything that arrived meanwhile.
``close()`` deletes what is still pending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from core.db import Database

log = logging.getLogger(__name__)

MAX_IDS_PER_STATEMENT = 1000


class OutboxCleaner:
    def __init__(self, db: Database, *, linger: float = 0.05) -> None:
        self.db = db
        self.linger = linger
        self._pending: list[int] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="outbox-cleaner", daemon=True)
        self._thread.start()

    def discard(self, ids: Iterable[int]) -> None:
        """Forget these published rows soon (after :attr:`linger`)."""
        ids = list(ids)
        if not ids:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("the outbox cleaner is closed")
            self._pending.extend(ids)
            self._cond.notify()

    def flush(self) -> None:
        """Delete everything pending now, on the caller's thread."""
        with self._cond:
            ids, self._pending = self._pending, []
        self._delete(ids)

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        self.flush()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                # Gather for a moment: the rows of requests arriving meanwhile go in the same
                # statement, and the job that was just published gets the CPU first.
                deadline = time.monotonic() + self.linger
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                if self._closed:
                    return  # close() flushes
                ids, self._pending = self._pending, []
            self._delete(ids)

    def _delete(self, ids: list[int]) -> None:
        from jobs.outbox import delete_rows

        for start in range(0, len(ids), MAX_IDS_PER_STATEMENT):
            part = ids[start:start + MAX_IDS_PER_STATEMENT]
            try:
                delete_rows(self.db, part)
            except Exception as exc:  # the sweeper re-sends these rows' messages later; harmless
                log.warning("deleting %d published outbox rows failed (the sweeper will re-send "
                            "their messages once): %s", len(part), exc)
