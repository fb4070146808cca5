"""Bearer API keys → the authenticated :class:`Principal`, with a short in-process cache.

``Authorization: Bearer <key>``; no key or a bad key is 401. A verified key is cached for
``auth_cache_seconds`` (at most 30 s), keyed by sha256 of the key, never the key itself: a
revoked key, a changed scope or plan takes effect within that time in every API process (at
once in the process that revoked it). ``last_used_at`` is written at most once a minute per key
and process, off the request's path to the database otherwise. With ``CAPTIONQ_AUTH=disabled``
(local mode only) every request is the built-in local tenant with every scope.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

from anyio import to_thread
from starlette.requests import Request

from core.db import Database
from core.errors import InsufficientScope, Unauthorized
from core.settings import Settings
from jobs.api_keys import LAST_USED_EVERY, SCOPES, KeyInfo, touch_last_used, verify_key
from jobs.plans import Limits, tenant_limits
from jobs.tenants import LOCAL_TENANT_ID

log = logging.getLogger(__name__)
CACHE_MAX = 10_000


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant, the key (None in local mode without keys), its scopes and the
    tenant's limits (as of the auth cache's last read)."""

    tenant_id: str
    key_id: str | None
    scopes: frozenset[str]
    limits: Limits

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise InsufficientScope(f"this API key lacks the {scope!r} scope "
                                    f"(it has: {', '.join(sorted(self.scopes)) or 'none'})")


class Authenticator:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.disabled = settings.auth == "disabled"
        self.ttl = settings.auth_cache_seconds
        self._cache: dict[str, tuple[KeyInfo, float]] = {}
        self._touched: dict[str, float] = {}  # key id → when this process last wrote last_used_at
        self._lock = threading.Lock()

    def _cached(self, digest: str) -> KeyInfo | None:
        with self._lock:
            hit = self._cache.get(digest)
        return hit[0] if hit and hit[1] > time.monotonic() else None

    def _remember(self, digest: str, info: KeyInfo) -> None:
        with self._lock:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (info, time.monotonic() + self.ttl)

    def _lookup(self, key: str, digest: str) -> KeyInfo | None:
        with self.db.session() as session:
            info = verify_key(session, key, self.settings)
        if info is not None and self.ttl > 0:
            self._remember(digest, info)
        return info

    def _local(self) -> KeyInfo:
        with self.db.session() as session:
            limits = tenant_limits(session, LOCAL_TENANT_ID, self.settings)
        info = KeyInfo(LOCAL_TENANT_ID, None, frozenset(SCOPES), limits)
        self._remember("local", info)
        return info

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's cache (it was just revoked here)."""
        with self._lock:
            for digest in [d for d, (info, _) in self._cache.items() if info.key_id == key_id]:
                del self._cache[digest]

    def _touch_due(self, key_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(key_id, -1e9) < LAST_USED_EVERY.total_seconds():
                return False
            if len(self._touched) >= CACHE_MAX:
                self._touched.clear()
            self._touched[key_id] = now
        return True

    def _touch(self, key_id: str) -> None:
        try:
            with self.db.session() as session:
                touch_last_used(session, key_id)
                session.commit()
        except Exception as exc:  # bookkeeping: never fail the request for it; retried next minute
            log.warning("could not record the use of key %s: %s", key_id, type(exc).__name__)

    async def principal_for(self, request: Request) -> Principal:
        if self.disabled:
            local = self._cached("local")
            if local is None:
                local = await to_thread.run_sync(self._local)
            return Principal(local.tenant_id, local.key_id, local.scopes, local.limits)
        header = request.headers.get("authorization")
        if not header:
            raise Unauthorized("missing Authorization: Bearer <api key> header")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("the Authorization header must be 'Bearer <api key>'")
        digest = hashlib.sha256(key.encode()).hexdigest()
        # A cached key needs no thread hop (most requests); a miss reads the database on a thread.
        info = self._cached(digest) or await to_thread.run_sync(self._lookup, key, digest)
        if info is None:
            raise Unauthorized("invalid API key")
        assert info.key_id is not None
        if self._touch_due(info.key_id):
            await to_thread.run_sync(self._touch, info.key_id)
        return Principal(info.tenant_id, info.key_id, info.scopes, info.limits)

    async def tenant_for(self, request: Request) -> str:
        return (await self.principal_for(request)).tenant_id
