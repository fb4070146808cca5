"""Bearer API keys → tenant id, with a short in-process cache.

``Authorization: Bearer <key>``; no key or a bad key is 401. Verified keys are cached for
``CACHE_SECONDS`` (so a revoked key stops working within that time) keyed by sha256 of the key,
never the key itself. With ``CAPTIONQ_AUTH=disabled`` (local mode only) every request is the
built-in local tenant.
"""

from __future__ import annotations

import hashlib
import threading
import time

from anyio import to_thread
from starlette.requests import Request

from core.db import Database
from core.errors import Unauthorized
from jobs.tenants import LOCAL_TENANT_ID, authenticate

CACHE_SECONDS = 30.0
CACHE_MAX = 10_000


class Authenticator:
    def __init__(self, db: Database, *, disabled: bool) -> None:
        self.db = db
        self.disabled = disabled
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _cached(self, digest: str) -> str | None:
        with self._lock:
            hit = self._cache.get(digest)
        return hit[0] if hit and hit[1] > time.monotonic() else None

    def _lookup(self, key: str) -> str | None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cached(digest)
        if cached is not None:
            return cached
        with self.db.session() as session:
            tenant = authenticate(session, key)
        if tenant is not None:
            with self._lock:
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = (tenant, now + CACHE_SECONDS)
        return tenant

    async def tenant_for(self, request: Request) -> str:
        if self.disabled:
            return LOCAL_TENANT_ID
        header = request.headers.get("authorization")
        if not header:
            raise Unauthorized("missing Authorization: Bearer <api key> header")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("the Authorization header must be 'Bearer <api key>'")
        # A cached key needs no thread hop (most requests); a miss reads the database on a thread.
        tenant = self._cached(hashlib.sha256(key.encode()).hexdigest()) or \
            await to_thread.run_sync(self._lookup, key)
        if tenant is None:
            raise Unauthorized("invalid API key")
        return tenant
