"""Rate limits on the API's POST routes: a token bucket per tenant and one per API key.

Each bucket holds up to ``burst`` tokens and refills at ``requests_per_second``; a request takes
one token from its tenant's bucket and one from its key's, both or neither. With Redis the two
buckets live there and one Lua script (``register_script``: EVALSHA, one round trip) refills,
checks and takes atomically, on Redis's own clock, so every API process shares the limit exactly
and no two processes can spend the same token. Without Redis (local mode: one API process) the
same arithmetic runs in the process under a lock.

A refused request is 429 ``rate_limited`` with ``Retry-After`` (whole seconds until a token is
back in every bucket it needs) and the IETF ``RateLimit`` / ``RateLimit-Policy`` fields
(draft-ietf-httpapi-ratelimit-headers): the policy as quota ``q`` = burst over window ``w`` =
the seconds the bucket takes to refill; ``r`` the whole tokens left, ``t`` the seconds until one
is back (r = 0) or the bucket is full. Accepted POSTs carry the same two fields.

If Redis cannot be reached the request is let through (logged at most every 10 s): the limits
protect the service, they are not worth refusing work over.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from core.errors import TooManyRequests
from core.settings import Settings
from jobs.plans import Limits

log = logging.getLogger(__name__)

# KEYS: one or two buckets. ARGV: rate (tokens/s) and burst of each bucket, in KEYS order.
# Returns {allowed (0/1), then per bucket: whole tokens left, µs until one token, µs until full}.
# Tokens are kept as a string (Lua numbers are doubles; a script's number replies are integers).
TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tokens = {}
local ok = 1
for i = 1, n do
  local rate = tonumber(ARGV[2 * i - 1]) / 1000000
  local burst = tonumber(ARGV[2 * i])
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local have = tonumber(v[1])
  if have == nil then
    have = burst
  else
    have = math.min(burst, have + math.max(0, now - tonumber(v[2])) * rate)
  end
  tokens[i] = have
  if have < 1 then ok = 0 end
end
local out = {ok}
for i = 1, n do
  local rate = tonumber(ARGV[2 * i - 1]) / 1000000
  local burst = tonumber(ARGV[2 * i])
  local have = tokens[i]
  if ok == 1 then
    have = have - 1
    redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', have), 'ts', now)
    redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate / 1000) + 1000)
  end
  out[#out + 1] = math.floor(have)
  out[#out + 1] = math.ceil(math.max(0, 1 - have) / rate)
  out[#out + 1] = math.ceil((burst - have) / rate)
end
return out
"""


@dataclass(frozen=True)
class Bucket:
    name: str  # "tenant" or "key": the policy's name in the headers
    key: str  # where it lives
    rate: float
    burst: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    headers: dict[str, str]
    retry_after: int  # whole seconds; 0 when allowed


def buckets_for(tenant_id: str, key_id: str | None, limits: Limits) -> list[Bucket]:
    # One hash tag per tenant: a Redis Cluster keeps a tenant's buckets in one slot, as a
    # multi-key script needs.
    out = [Bucket("tenant", f"captionq:rl:{{{tenant_id}}}", limits.requests_per_second, limits.burst)]
    if key_id is not None:
        out.append(Bucket("key", f"captionq:rl:{{{tenant_id}}}:{key_id}", limits.key_requests_per_second,
                          limits.key_burst))
    return out


def decide(buckets: list[Bucket], allowed: bool, per_bucket: list[tuple[int, int, int]]) -> Decision:
    """The answer and its header fields from the script's reply (``per_bucket``: tokens left,
    µs until one token, µs until full, in ``buckets`` order)."""
    policy = ", ".join(f'"{b.name}";q={b.burst};w={max(1, math.ceil(b.burst / b.rate))}' for b in buckets)
    # Report the bucket closest to refusing: the fewest tokens left.
    i = min(range(len(buckets)), key=lambda j: per_bucket[j][0])
    left, until_one, until_full = per_bucket[i]
    wait_us = max(p[1] for p in per_bucket)  # a token must be back in every bucket
    reset = math.ceil(until_one / 1e6) if left == 0 else math.ceil(until_full / 1e6)
    headers = {"RateLimit-Policy": policy, "RateLimit": f'"{buckets[i].name}";r={left};t={reset}'}
    retry_after = 0 if allowed else max(1, math.ceil(wait_us / 1e6))
    if not allowed:
        headers["Retry-After"] = str(retry_after)
    return Decision(allowed, headers, retry_after)


class LocalBuckets:
    """The script's arithmetic in one process (local mode without Redis), on the monotonic clock."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}  # key → (tokens, when)
        self._lock = threading.Lock()

    def take(self, buckets: list[Bucket]) -> tuple[bool, list[tuple[int, int, int]]]:
        now = time.monotonic()
        with self._lock:
            have = []
            for b in buckets:
                tokens, when = self._state.get(b.key, (float(b.burst), now))
                have.append(min(b.burst, tokens + max(0.0, now - when) * b.rate))
            ok = all(h >= 1 for h in have)
            if ok:
                have = [h - 1 for h in have]
                for b, h in zip(buckets, have, strict=True):
                    self._state[b.key] = (h, now)
                if len(self._state) > 100_000:  # full buckets are the default: forgetting is free
                    self._state = {k: v for k, v in self._state.items() if v[1] > now - 3600}
        return ok, [(math.floor(h), math.ceil(max(0.0, 1 - h) / b.rate * 1e6),
                     math.ceil((b.burst - h) / b.rate * 1e6)) for b, h in zip(buckets, have, strict=True)]


class RateLimiter:
    """One per API process (``AppContext.limiter``)."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limits
        self.redis_url = settings.events_redis_url
        self.timeout = settings.rate_limit_timeout_seconds
        self.local = LocalBuckets()
        self._client: Any = None
        self._script: Any = None
        self._last_warning = 0.0

    def _redis_script(self) -> Any:
        # Made on first use, inside the event loop that will use it (redis.asyncio binds there).
        if self._script is None:
            import redis.asyncio as aioredis

            assert self.redis_url is not None
            self._client = aioredis.Redis.from_url(
                self.redis_url, socket_connect_timeout=self.timeout, socket_timeout=self.timeout,
                client_name="captionq-ratelimit")
            self._script = self._client.register_script(TOKEN_BUCKET_LUA)
        return self._script

    async def check(self, tenant_id: str, key_id: str | None, limits: Limits) -> Decision | None:
        """Take a token for the request, or raise 429 ``rate_limited``. None when limits are off
        (or Redis could not answer)."""
        if not self.enabled:
            return None
        buckets = buckets_for(tenant_id, key_id, limits)
        if self.redis_url is None:
            ok, per_bucket = self.local.take(buckets)
        else:
            try:
                args = [x for b in buckets for x in (repr(float(b.rate)), str(b.burst))]
                reply = await self._redis_script()(keys=[b.key for b in buckets], args=args)
            except Exception as exc:  # an outage: let the request through
                self._warn(exc)
                return None
            ok = bool(reply[0])
            per_bucket = [(int(reply[1 + 3 * i]), int(reply[2 + 3 * i]), int(reply[3 + 3 * i]))
                          for i in range(len(buckets))]
        decision = decide(buckets, ok, per_bucket)
        if not decision.allowed:
            raise TooManyRequests(
                f"rate limit reached: at most {limits.requests_per_second:g} requests per second per tenant"
                f" and {limits.key_requests_per_second:g} per key (bursts of {limits.burst} and "
                f"{limits.key_burst}); retry in {decision.retry_after} s", headers=decision.headers)
        return decision

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning("rate limits not applied: Redis did not answer (%s: %s)", type(exc).__name__, exc)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._script = None


class RateLimitHeaders:
    """Adds the ``RateLimit`` / ``RateLimit-Policy`` fields the limiter left in the request's
    state (``ratelimit_headers``) to an accepted request's response; a refused one carries them
    in its problem answer already."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return

        async def send_with_fields(message: Any) -> None:
            if message["type"] == "http.response.start":
                fields = scope.get("state", {}).get(STATE_KEY)
                if fields:
                    present = {k.lower() for k, _ in message.get("headers", [])}
                    extra = [(k.lower().encode(), v.encode()) for k, v in fields.items()
                             if k.lower().encode() not in present]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_fields)


STATE_KEY = "ratelimit_headers"
