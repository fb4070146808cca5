"""What a task thread does while its job is in the engine: stream tokens, store ``partial_text``,
watch for cancel and the time limit.

The engine thread calls ``on_token(delta)`` and ``should_cancel()`` between generation steps, for
every row of a batch; both must be instant, so they only touch memory here. The task thread,
which would otherwise just block on the future, does the I/O in :meth:`JobWatch.wait`:

- every ~0.1 s: new text goes out as a ``token`` event (Redis pub/sub, :mod:`jobs.live`); with
  no live events (no Redis for them, or the local mode) the thread wakes only every 0.5 s: each
  wake-up of the up to ``concurrency`` waiting task threads competes with the engine thread for
  the GIL, and the engine thread of a GPU worker is Python-bound;
- every ``PARTIAL_INTERVAL`` (0.5 s): ``partial_text`` is written through
  ``JobService.set_partial_text`` (one short UPDATE) when it changed (the first time as soon as
  there is text; not at the end of a round, which the job's record replaces at once);
- every ``CANCEL_INTERVAL`` (0.5 s): ``JobService.is_cancel_requested`` is polled; a requested
  cancel (or a job that stopped being ``running`` under us) raises the flag that
  ``should_cancel`` returns, and the engine drops the row at its next step.
- the soft time limit: past the deadline the flag is raised as well, with reason ``timeout``.

A job with several tasks (jobs.tasks) has one text stream per task (:meth:`JobWatch.sink`): its
token events carry the task's name, and ``partial_text`` follows the first task that streams
(grounding tasks do not).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from jobs.live import LivePublisher
from jobs.service import JobService
from worker.cancels import POLL_WITH_PUSH, CancelListener

log = logging.getLogger(__name__)

T = TypeVar("T")
StopReason = Literal["cancel", "timeout", "gone"]

TICK = 0.1
PARTIAL_INTERVAL = 0.5
CANCEL_INTERVAL = 0.5
QUIET_TICK = min(PARTIAL_INTERVAL, CANCEL_INTERVAL)  # no token events to send


class Stopped(Exception):
    """Raised on the task thread when the job must stop before or between engine calls."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason)
        self.reason: StopReason = reason


@dataclass
class _Stream:
    """One conversation's text: the current round's text so far and how much went out."""

    round: int = 0
    text: str = ""  # this round's text so far (engine thread appends)
    published: int = 0  # length of text already sent as token events


class JobWatch:
    """One job's live state; shared by its task thread and (through the callbacks) the engine."""

    def __init__(self, job_id: str, jobs: JobService, live: LivePublisher | None, *, deadline: float,
                 poll_now: bool = False, clock: Callable[[], float] = time.monotonic,
                 cancels: CancelListener | None = None) -> None:
        self.job_id = job_id
        self.jobs = jobs
        self.live = live
        self.cancels = cancels
        self.deadline = deadline
        self.clock = clock
        self.reason: StopReason | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # None: the job's one conversation; else a task's name (jobs.tasks)
        self._streams: dict[str | None, _Stream] = {None: _Stream()}
        self._partial_stream: str | None = None  # the stream partial_text follows
        self._stored = ""  # partial_text last written to the database
        self._next_partial = 0.0
        # The claim just saw the job running without a cancel (a cancel of a queued job cancels
        # it at once), so the first look is due after one interval — unless this delivery took
        # over an earlier attempt, during which a cancel may have been requested.
        self._next_cancel = 0.0 if poll_now else clock() + self._poll_interval()
        if cancels is not None:
            cancels.register(job_id, self)

    def close(self) -> None:
        """The job is over on this worker: no more cancel announcements for it."""
        if self.cancels is not None:
            self.cancels.unregister(self.job_id)

    def _poll_interval(self) -> float:
        # Cancels announced on Redis stop the job at once; the poll is then only the safety net.
        return POLL_WITH_PUSH if self.cancels is not None and self.cancels.connected else CANCEL_INTERVAL

    # --- engine-thread callbacks (memory only) ------------------------------------------------
    def on_token(self, delta: str) -> None:
        with self._lock:
            self._streams[None].text += delta

    def sink(self, task: str) -> Callable[[str], None]:
        """The ``on_token`` of task ``task``'s requests: its own stream (the first task made
        also feeds ``partial_text``)."""
        with self._lock:
            if task not in self._streams:
                self._streams[task] = _Stream()
                if self._partial_stream is None:
                    self._partial_stream = task

        def on_token(delta: str) -> None:
            with self._lock:
                self._streams[task].text += delta

        return on_token

    def should_cancel(self) -> bool:
        if not self._stop.is_set() and self.clock() >= self.deadline:
            self.stop("timeout")
        return self._stop.is_set()

    # --- task thread ---------------------------------------------------------------------
    def stop(self, reason: StopReason) -> None:
        if self.reason is None:
            self.reason = reason
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def new_round(self, index: int, task: str | None = None) -> None:
        self.flush(store=False)
        with self._lock:
            self._streams[task] = _Stream(round=index)

    def check(self) -> None:
        """Between pieces of work on the task thread: poll cancel (throttled) and the deadline;
        raise :class:`Stopped` when the job must stop."""
        self._poll(self.clock())
        if self.should_cancel():
            raise Stopped(self.reason or "cancel")

    def wait(self, future: Future[T]) -> T:
        """Block until ``future`` completes, doing the live I/O meanwhile."""
        tick = TICK if self.live is not None else QUIET_TICK
        while True:
            try:
                result = future.result(timeout=tick)
            except FutureTimeout:
                self.flush()
                self._poll(self.clock())
                self.should_cancel()
                continue
            # The round's last tokens go to live listeners; the database is not written: the
            # record of the job (or the next round) replaces partial_text right away.
            self.flush(store=False)
            return result

    def wait_all(self, futures: list[Future[T]]) -> list[T]:
        return [self.wait(f) for f in futures]

    def wait_any(self, futures: list[Future[Any]]) -> set[Future[Any]]:
        """Block until at least one of ``futures`` completes (the live I/O meanwhile); the
        completed ones. Other streams go on, so ``partial_text`` is stored as usual."""
        tick = TICK if self.live is not None else QUIET_TICK
        while True:
            done, _ = wait_futures(futures, timeout=tick, return_when=FIRST_COMPLETED)
            self.flush()
            if done:
                return done
            self._poll(self.clock())
            self.should_cancel()

    def _poll(self, now: float) -> None:
        if now < self._next_cancel or self._stop.is_set():
            return
        self._next_cancel = now + self._poll_interval()
        try:
            if self.jobs.is_cancel_requested(self.job_id):
                self.stop("cancel")
        except Exception as exc:  # a database hiccup: keep generating, look again later
            log.warning("cancel check for %s failed: %s", self.job_id, exc)

    def flush(self, *, store: bool = True) -> None:
        """Publish new text as token events; store ``partial_text`` when it changed and the
        last write is ``PARTIAL_INTERVAL`` old (and ``store``)."""
        with self._lock:
            news = [(task, st.round, st.published, st.text) for task, st in self._streams.items()
                    if len(st.text) > st.published]
            for task, _, _, text in news:
                self._streams[task].published = len(text)
            text = self._streams[self._partial_stream].text if self._partial_stream in self._streams else ""
            snapshot = {task: {"round": st.round, "text": st.text} for task, st in self._streams.items()
                        if task is not None}
        if self.live is not None:
            for task, round_index, sent, new_text in news:
                if task is None:
                    self.live.tokens(self.job_id, round_index, sent, new_text[sent:], new_text)
                else:
                    self.live.tokens(self.job_id, round_index, sent, new_text[sent:], new_text, task=task,
                                     tasks_text=snapshot)
        now = self.clock()
        if store and text != self._stored and now >= self._next_partial:
            self._next_partial = now + PARTIAL_INTERVAL
            self._stored = text
            try:
                if not self.jobs.set_partial_text(self.job_id, text):
                    self.stop("gone")
            except Exception as exc:
                log.warning("partial_text for %s not stored: %s", self.job_id, exc)
