"""The API's shared pub/sub connection against a real Redis: confirmed subscriptions, several
streams on one channel, unsubscribing with the last, and a lost connection."""

from __future__ import annotations

import asyncio
import uuid

import redis

from api.live_hub import LOST, LiveHub


def _numsub(r: redis.Redis, channel: str) -> int:
    return int(dict(r.pubsub_numsub(channel)).get(channel.encode(), 0))


def test_subscribe_is_confirmed_and_shared(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    ch = f"hub-test-{uuid.uuid4().hex}"

    async def main() -> None:
        hub = LiveHub(redis_url)
        try:
            a = await hub.subscribe(ch)
            # Confirmed: a publish right after subscribe returns must arrive.
            assert sync.publish(ch, b"one") == 1
            assert await a.next(timeout=2) == b"one"
            b = await hub.subscribe(ch)  # the same channel: no second SUBSCRIBE, one connection
            assert _numsub(sync, ch) == 1
            sync.publish(ch, b"two")
            assert await a.next(timeout=2) == b"two" and await b.next(timeout=2) == b"two"
            other = await hub.subscribe(ch + "-other")
            assert await other.next(timeout=0.05) is None  # nothing for it
            await a.close()
            sync.publish(ch, b"three")
            assert await b.next(timeout=2) == b"three"
            await b.close()
            await other.close()
            for _ in range(100):  # UNSUBSCRIBE is sent, its reply read by the reader
                if _numsub(sync, ch) == 0:
                    break
                await asyncio.sleep(0.01)
            assert _numsub(sync, ch) == 0
            again = await hub.subscribe(ch)  # subscribe again after the last left
            sync.publish(ch, b"four")
            assert await again.next(timeout=2) == b"four"
            await again.close()
        finally:
            await hub.close()

    asyncio.run(main())
    sync.close()


def test_lost_connection_is_reported_and_replaced(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    ch = f"hub-lost-{uuid.uuid4().hex}"

    async def main() -> None:
        name = f"hub-test-{uuid.uuid4().hex[:8]}"
        hub = LiveHub(redis_url, client_name=name)
        try:
            sub = await hub.subscribe(ch)
            killed = sum(sync.client_kill_filter(_id=c["id"]) for c in sync.client_list()
                         if c.get("name") == name and int(c.get("sub", 0) or 0) > 0)
            assert killed >= 1
            assert await sub.next(timeout=5) is LOST
            assert sub.lost and await sub.next(timeout=0.05) is None
            await sub.close()
            fresh = await hub.subscribe(ch)  # a new connection
            sync.publish(ch, b"after")
            assert await fresh.next(timeout=2) == b"after"
            await fresh.close()
        finally:
            await hub.close()

    asyncio.run(main())
    sync.close()
