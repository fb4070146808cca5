"""A workaround for kombu's Redis transport (seen with kombu 5.7.0, Redis 7.0).

When Redis goes away while a worker holds unacknowledged messages, Celery's consumer closes its
channel and reconnects with a new one. Two calls on the old channel then reach for a client built
from a connection that is already gone and raise ``AttributeError`` (``'NoneType' object has no
attribute 'hostname'`` / ``'client'``): putting the unacknowledged messages back while closing,
and acknowledging a task that finishes after the reconnect. Celery treats either as an
unrecoverable error and the whole worker process exits instead of carrying on.

Here both give up with a warning instead. Nothing is lost by it: such a message stays in Redis's
``unacked`` set (if Redis kept it) and comes back after the visibility timeout, where its claim
finds the job already running or ended and does nothing; the sweeper re-sends the message of every
job left ``queued`` long before that (jobs/recovery.py). The jobs live in the database, not in
the messages.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_applied = False


def apply() -> None:
    """Patch ``kombu.transport.redis.QoS`` once per process (see the module docs)."""
    global _applied
    if _applied:
        return
    from kombu.transport import redis as kombu_redis

    qos = kombu_redis.QoS
    for name, fallback in (("restore_unacked", []), ("ack", None), ("reject", None)):
        setattr(qos, name, _tolerant(getattr(qos, name), name, fallback))
    _applied = True


def _tolerant(method: Any, name: str, fallback: Any) -> Any:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except AttributeError as exc:  # the channel's connection is gone: see the module docs
            log.warning("broker channel closed under %s (%s); left to the visibility timeout and "
                        "the sweeper", name, exc)
            return fallback

    call.__name__ = name
    return call
