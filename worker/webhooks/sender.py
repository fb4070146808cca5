"""One webhook attempt: check the URL's addresses now, POST to exactly those, report what happened.

Why the checks happen here and not only at submission: DNS can change between the job's
submission and a retry hours later (DNS rebinding), so every attempt resolves the host again,
refuses private/loopback/link-local/metadata addresses (``storage.addresses`` policy;
``CAPTIONQ_ALLOW_PRIVATE_URLS`` lets private ones through) and then connects to one of the
addresses it checked — never to whatever a second lookup would return. That is the storage
guard's network backend (``storage.netguard.GuardedBackend``); this module adds the attempt's
deadline around it. The URL keeps its host name, so ``Host``, TLS SNI and certificate checks are
normal.

Redirects are never followed (httpcore has no redirect logic at all): a 3xx is a failed attempt.
The attempt has one wall-clock budget (``timeout``) covering connect, TLS, sending and the answer's
headers, so a receiver that drips bytes cannot hold a worker thread longer than that.

:func:`send` never raises for anything the network or the receiver does; the outcome is an
:class:`AttemptResult` that the caller records.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpcore

from storage.addresses import Resolver
from storage.errors import StorageError, UrlNotAllowed
from storage.netguard import GuardedBackend
from storage.urls import parse_http_url

USER_AGENT = "captionq-webhooks/1"
ERROR_BODY_BYTES = 512  # how much of a failed answer's body we keep for the attempt log
MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class AttemptResult:
    started_at: datetime
    duration_seconds: float
    status_code: int | None  # None when no answer came (refused address, timeout, connection error)
    error: str | None  # None on success; otherwise a short human-readable reason
    retry_after: str | None = None  # the raw header, for the schedule to interpret

    @property
    def ok(self) -> bool:
        return self.error is None


class _DeadlineStream(httpcore.NetworkStream):
    """A stream whose every read/write waits at most until the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _left(self, timeout: float | None, exc: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise exc("webhook attempt deadline reached")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = self._left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """Wraps the storage guard's backend (resolve, check, connect to a checked address) so that
    connecting and every later read/write share the attempt's one deadline."""

    def __init__(self, inner: httpcore.NetworkBackend, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("webhook attempt deadline reached")
        stream = self._inner.connect_tcp(
            host, port, timeout=left if timeout is None else min(timeout, left),
            local_address=local_address, socket_options=socket_options,
        )
        return _DeadlineStream(stream, self._deadline)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _describe(exc: Exception, timeout: float) -> str:
    if isinstance(exc, httpcore.TimeoutException):
        return f"timeout: no answer within {timeout:g} s"
    if isinstance(exc, httpcore.ConnectError):
        return _clip(f"connection failed: {exc}")
    if isinstance(exc, (httpcore.RemoteProtocolError, httpcore.LocalProtocolError)):
        return _clip(f"protocol error: {exc}")
    if isinstance(exc, ssl.SSLError):
        return _clip(f"TLS error: {exc}")
    return _clip(f"{type(exc).__name__}: {exc}")


def _storage_failure(e: StorageError) -> str:
    # A refused address or a name that does not resolve (now): nothing was sent. It is retried
    # like any failure, since DNS may be mid-change; the schedule bounds it.
    if isinstance(e, UrlNotAllowed):
        return _clip(f"url_not_allowed: {e.message}")
    return _clip(f"connection failed: {e.message}")


def _failure_text(status: int, headers: Mapping[str, str], body: bytes) -> str:
    if 300 <= status < 400:
        where = headers.get("location", "")
        return _clip(f"HTTP {status}: redirect not followed" + (f" (to {where})" if where else ""))
    snippet = body[:ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
    return _clip(f"HTTP {status}" + (f": {snippet}" if snippet else ""))


def send(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    allow_private: bool,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AttemptResult:
    """POST ``body`` with ``headers`` to ``url`` once. Success means a 2xx within ``timeout``."""
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    deadline = t0 + timeout

    def done(status: int | None, error: str | None, retry_after: str | None = None) -> AttemptResult:
        return AttemptResult(started_at, round(time.monotonic() - t0, 6), status, error, retry_after)

    try:
        # Syntax and literal-address policy first; the name's addresses are resolved and checked
        # by the guard when it connects (once, and it connects to what it checked).
        target = parse_http_url(url, allow_private=allow_private)
    except StorageError as e:
        return done(None, _storage_failure(e))

    request_headers = [(b"user-agent", USER_AGENT.encode())]
    request_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    extensions = {"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}}
    guard = GuardedBackend(allow_private=allow_private, resolver=resolver)
    pool = httpcore.ConnectionPool(
        ssl_context=ssl_context, network_backend=_DeadlineBackend(guard, deadline),
        max_connections=1, retries=0,
    )
    try:
        with pool, pool.stream(
            "POST", target.url, headers=request_headers, content=body, extensions=extensions
        ) as resp:
            status = resp.status
            resp_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.headers}
            if 200 <= status < 300:
                return done(status, None)
            snippet = b""
            try:
                for chunk in resp.iter_stream():
                    snippet += chunk
                    if len(snippet) >= ERROR_BODY_BYTES:
                        break
            except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError):
                pass  # the status is what matters; a broken or slow error body is noise
            return done(status, _failure_text(status, resp_headers, snippet), resp_headers.get("retry-after"))
    except StorageError as e:  # refused by the guard when connecting, or DNS failed
        return done(None, _storage_failure(e))
    except Exception as e:  # every way a request can fail is one failed attempt, recorded
        return done(None, _describe(e, timeout))
