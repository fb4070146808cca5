"""Live job events on Redis: what the worker publishes while a job runs and the SSE route reads.

Not part of the job's state (that is the database and the outbox): these are best-effort
notifications for ``GET /v1/jobs/{id}/events``. A lost notification only delays the stream,
because the SSE route also polls the database.

Per job, two Redis keys:

- channel ``captionq:job:{id}:events`` (pub/sub): JSON ``{"event": "status"|"token"|"done",
  "data": {...}}``. ``token`` data is ``{"text": delta, "round": r, "offset": n}`` where ``offset``
  is the length of round ``r``'s text before this delta (a job with tasks adds ``"task": name``:
  each task is its own stream of rounds); ``status`` and ``done`` data is
  ``{"status": s}``, and ``done`` may carry ``"job"``: the final Job JSON, as committed.
- string ``captionq:job:{id}:text``: JSON ``{"round": r, "text": full text of round r so far}``
  (a job with tasks: ``{"tasks": {name: {"round": r, "text": ...}}}``, every task's stream),
  written in the same MULTI/EXEC as each token publish.

Why both: a subscriber that SUBSCRIBEs first and then GETs the text key has no gap and no
duplicate — every flush published before the GET is in the text it read, every flush after it
arrives on the channel and is trimmed by ``offset``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

TEXT_TTL_SECONDS = 3600
# The API announces each cancel of a running job here (payload: the job id); every worker process
# listens (worker/cancels.py). SQL's ``cancel_requested`` stays the truth; this only makes it fast.
CANCEL_CHANNEL = "captionq:cancels"


def channel(job_id: str) -> str:
    return f"captionq:job:{job_id}:events"


def text_key(job_id: str) -> str:
    return f"captionq:job:{job_id}:text"


def encode(event: str, data: dict[str, Any]) -> str:
    return json.dumps({"event": event, "data": data}, separators=(",", ":"), ensure_ascii=False)


def decode(raw: bytes | str) -> tuple[str, dict[str, Any]] | None:
    try:
        msg = json.loads(raw)
        return str(msg["event"]), dict(msg.get("data") or {})
    except (ValueError, KeyError, TypeError):
        return None


class LivePublisher:
    """Publishes live events for jobs. Never raises: a Redis hiccup must not fail a job.

    The calls return at once: the Redis commands run on one thread of the publisher's own, in
    the order of the calls (so a job's ``status``, ``token`` and ``done`` events keep their
    order), and a job's task thread does not wait for a round trip to Redis before it goes on
    to the model. :meth:`close` sends what is still queued."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-events")

    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # closed: the process is stopping
            self._sender.submit(fn, *args)

    def status(self, job_id: str, status: str) -> None:
        self._later(self._publish, job_id, "status", {"status": status})

    def done(self, job_id: str, status: str, job: dict[str, Any] | None = None) -> None:
        """The job reached a terminal state. ``job``: the committed Job JSON (published after the
        commit), which the SSE route sends as is; without it the route reads the database."""
        data: dict[str, Any] = {"status": status}
        if job is not None:
            data["job"] = job
        self._later(self._send_done, job_id, data)

    def _send_done(self, job_id: str, data: dict[str, Any]) -> None:
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.publish(channel(job_id), encode("done", data))
            pipe.delete(text_key(job_id))
            pipe.execute()
        except Exception as exc:
            log.debug("live event for %s not published: %s", job_id, exc)

    def tokens(self, job_id: str, round_index: int, offset: int, delta: str, full_text: str, *,
               task: str | None = None, tasks_text: dict[str, Any] | None = None) -> None:
        """A token event; of task ``task`` of a job with tasks, whose ``tasks_text`` is every
        task's current round and text (the snapshot a new listener starts from)."""
        self._later(self._send_tokens, job_id, round_index, offset, delta, full_text, task, tasks_text)

    def _send_tokens(self, job_id: str, round_index: int, offset: int, delta: str, full_text: str,
                     task: str | None, tasks_text: dict[str, Any] | None) -> None:
        snapshot: dict[str, Any] = {"round": round_index, "text": full_text}
        data: dict[str, Any] = {"text": delta, "round": round_index, "offset": offset}
        if task is not None:
            snapshot = {"tasks": tasks_text or {task: snapshot}}
            data["task"] = task
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(text_key(job_id), json.dumps(snapshot), ex=TEXT_TTL_SECONDS)
            pipe.publish(channel(job_id), encode("token", data))
            pipe.execute()
        except Exception as exc:
            log.debug("live tokens for %s not published: %s", job_id, exc)

    def _publish(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        try:
            self.client.publish(channel(job_id), encode(event, data))
        except Exception as exc:
            log.debug("live event for %s not published: %s", job_id, exc)

    def close(self) -> None:
        self._sender.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self.client.close()
