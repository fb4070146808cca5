"""One Redis pub/sub connection per API process, shared by every SSE stream.

A ``PubSub`` per stream costs a new Redis connection for each ``GET /v1/jobs/{id}/events`` (redis-py
closes a pub/sub connection rather than pooling it): ~0.7 ms more before the stream can start, and
one connection per open dashboard. The hub keeps one subscriber connection and one reader task;
streams subscribe to their job's channel through it and get that channel's messages on their own
queue.

Ordering guarantees the SSE route relies on: :meth:`LiveHub.subscribe` returns only after Redis
confirmed the subscription (the reader saw the ``subscribe`` reply for this SUBSCRIBE, replies
come in order on the connection), so every later PUBLISH to the channel reaches the stream. When
several streams watch the same job the channel is subscribed once and unsubscribed with the last.

If the connection fails, every open subscription is told (:data:`LOST`) and the next subscribe
opens a new connection; a stream that lost its subscription relies on its database polling, as
it would with Redis down from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

LOST = object()  # put on a subscription's queue when the shared connection failed


class Subscription:
    """One stream's view of one channel: :meth:`next` gives message payloads (bytes), or
    :data:`LOST`; :meth:`close` unsubscribes (once)."""

    def __init__(self, hub: LiveHub, channel: str) -> None:
        self.hub = hub
        self.channel = channel
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.lost = False
        self._closed = False

    async def next(self, timeout: float) -> Any:
        """The next payload, :data:`LOST`, or None when nothing came within ``timeout`` s."""
        if self.lost and self.queue.empty():
            await asyncio.sleep(timeout)
            return None
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
        if item is LOST:
            self.lost = True
        return item

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.hub._release(self)


class LiveHub:
    def __init__(self, url: str, *, confirm_timeout: float = 2.0, client_name: str = "captionq-api-events",
                 ) -> None:
        import redis.asyncio as aioredis

        # Named, so that an operator can tell its connections apart in CLIENT LIST.
        self.client = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, client_name=client_name)
        self.confirm_timeout = confirm_timeout
        self._lock = asyncio.Lock()
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._subs: dict[str, set[Subscription]] = {}
        self._acks: dict[str, list[asyncio.Future[None]]] = {}
        # Replies still to come for SUBSCRIBEs whose every watcher left before it was confirmed:
        # they must not confirm a later SUBSCRIBE of the same channel (replies come in order).
        self._stale: dict[str, int] = {}

    async def subscribe(self, channel: str) -> Subscription:
        """Subscribe to ``channel``; returns once Redis confirmed it. Raises when Redis is
        unreachable or does not confirm within ``confirm_timeout``."""
        sub = Subscription(self, channel)
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self.client.pubsub()
            watchers = self._subs.setdefault(channel, set())
            pending = self._acks.get(channel)
            if watchers and not pending:
                watchers.add(sub)  # already confirmed: every later publish reaches us too
                return sub
            watchers.add(sub)
            if pending:
                ack = pending[-1]  # the SUBSCRIBE in flight covers us
            else:
                ack = asyncio.get_running_loop().create_future()
                self._acks.setdefault(channel, []).append(ack)
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:
                    self._forget(sub)
                    self._acks.pop(channel, None)
                    raise
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(self._pubsub), name="live-hub-reader")
        try:
            await asyncio.wait_for(asyncio.shield(ack), self.confirm_timeout)
        except BaseException:
            await sub.close()
            raise
        return sub

    async def get(self, key: str) -> bytes | None:
        return await self.client.get(key)  # type: ignore[no-any-return]

    async def close(self) -> None:
        async with self._lock:
            reader, self._reader = self._reader, None
            pubsub, self._pubsub = self._pubsub, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.client.aclose()  # type: ignore[attr-defined]

    # --- internals ----------------------------------------------------------------------------
    def _forget(self, sub: Subscription) -> bool:
        """Drop ``sub``; True when it was its channel's last watcher."""
        watchers = self._subs.get(sub.channel)
        if watchers is None:
            return False
        watchers.discard(sub)
        if watchers:
            return False
        del self._subs[sub.channel]
        return True

    async def _release(self, sub: Subscription) -> None:
        async with self._lock:
            if self._forget(sub) and self._pubsub is not None and not sub.lost:
                pending = self._acks.pop(sub.channel, [])
                if pending:
                    self._stale[sub.channel] = self._stale.get(sub.channel, 0) + len(pending)
                for ack in pending:
                    if not ack.done():
                        ack.set_result(None)
                with contextlib.suppress(Exception):
                    await self._pubsub.unsubscribe(sub.channel)

    async def _read(self, pubsub: Any) -> None:
        try:
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is not None:
                    self._dispatch(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("live events connection failed; open streams fall back to polling: %s", exc)
            await self._lost(pubsub)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        channel = msg.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if kind == "subscribe":
            stale = self._stale.get(channel, 0)  # type: ignore[arg-type]
            if stale:
                if stale == 1:
                    del self._stale[channel]  # type: ignore[arg-type]
                else:
                    self._stale[channel] = stale - 1  # type: ignore[index]
                return
            acks = self._acks.get(channel)  # type: ignore[arg-type]
            if acks:
                ack = acks.pop(0)
                if not acks:
                    del self._acks[channel]  # type: ignore[arg-type]
                if not ack.done():
                    ack.set_result(None)
        elif kind == "message":
            for sub in self._subs.get(channel, ()):  # type: ignore[arg-type]
                sub.queue.put_nowait(msg["data"])

    async def _lost(self, pubsub: Any) -> None:
        async with self._lock:
            if self._pubsub is pubsub:
                self._pubsub = None
            for watchers in self._subs.values():
                for sub in watchers:
                    sub.queue.put_nowait(LOST)
            self._subs.clear()
            for acks in self._acks.values():
                for ack in acks:
                    if not ack.done():
                        ack.set_result(None)  # its subscription already holds LOST
            self._acks.clear()
            self._stale.clear()
        with contextlib.suppress(Exception):
            await pubsub.aclose()


def hub_for(request: Any, url: str | None) -> LiveHub | None:
    """The app's one hub (made on first use), or None without a Redis for live events."""
    if not url:
        return None
    state = request.app.state
    hub = getattr(state, "captionq_live_hub", None)
    if hub is None:
        hub = LiveHub(url)
        state.captionq_live_hub = hub
    return hub  # type: ignore[no-any-return]
