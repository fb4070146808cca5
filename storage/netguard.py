"""Outbound HTTP(S) that only ever connects to an address that passed the policy check.

How: httpx delegates connecting to an httpcore *network backend*. :class:`GuardedBackend` resolves
the host once, checks every address (:func:`storage.addresses.check_host`) and opens the TCP
connection to one of exactly those addresses — there is no second lookup that a DNS-rebinding
server could answer differently. Everything above the socket is untouched: the request keeps its
``Host`` header, and for https httpcore still runs TLS with SNI and certificate verification
against the *hostname* from the URL, not the IP.

Redirects: :func:`open_stream` / :func:`safe_request` do not follow them unless asked
(``follow_redirects=True``, used for media with ``StorageConfig.max_redirects`` hops). Each hop is
re-validated as a fresh URL (scheme http/https, no credentials, literal/name policy) and its
connection goes through the same guarded backend, so a redirect cannot lead into private space.
Webhooks use the default: a 3xx is returned as the answer. Proxies from the environment are
ignored (``trust_env=False``): a proxy would connect on our behalf, unchecked.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from storage.addresses import Resolver, check_host
from storage.blob import Spool, copy_capped
from storage.errors import MediaTooLarge, MediaUnreadable, TransientError, UrlNotAllowed
from storage.urls import parse_http_url

USER_AGENT = "captionq/1 (+media fetch)"
_SENSITIVE = ("authorization", "cookie", "proxy-authorization")


class GuardedBackend(httpcore.NetworkBackend):
    """An httpcore network backend that resolves once, checks, and connects to the checked IP."""

    def __init__(self, *, allow_private: bool, resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = check_host(host, port, allow_private=self.allow_private, resolver=self.resolver)
        last: Exception | None = None
        for ip in addresses:  # every one of them passed the check; try them in resolver order
            try:
                return self._inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        assert last is not None
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise UrlNotAllowed("unix sockets are not reachable through the guarded client")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connections all go through :class:`GuardedBackend`."""

    def __init__(
        self, *, allow_private: bool, verify: ssl.SSLContext | bool = True, resolver: Resolver | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=20, max_keepalive_connections=10)
        super().__init__(verify=verify, trust_env=False, limits=limits)
        # httpx offers no parameter for the network backend, so the pool it built is replaced by an
        # identical one on our backend (tests/storage check the pinning end to end).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allow_private=allow_private, resolver=resolver),
        )


def guarded_client(
    *, allow_private: bool, timeout: float | httpx.Timeout = 10.0, verify: ssl.SSLContext | bool = True,
    resolver: Resolver | None = None,
) -> httpx.Client:
    """An httpx client that never follows redirects by itself and never uses env proxies."""
    return httpx.Client(
        transport=GuardedTransport(allow_private=allow_private, verify=verify, resolver=resolver),
        trust_env=False, follow_redirects=False, timeout=timeout, headers={"User-Agent": USER_AGENT},
    )


@contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """httpx failures → our typed errors (timeouts and network errors are transient)."""
    try:
        yield
    except httpx.TimeoutException as e:
        raise TransientError(f"{what}: timed out ({type(e).__name__})") from e
    except httpx.InvalidURL as e:
        raise UrlNotAllowed(f"{what}: invalid URL: {e}") from e
    except httpx.TransportError as e:
        raise TransientError(f"{what}: {type(e).__name__}: {e}") from e


@contextmanager
def open_stream(
    method: str, url: str, *, headers: Mapping[str, str] | None = None, content: bytes | None = None,
    timeout: float | httpx.Timeout = 10.0, allow_private: bool = False, follow_redirects: bool = False,
    max_redirects: int = 5, verify: ssl.SSLContext | bool = True, resolver: Resolver | None = None,
    client: httpx.Client | None = None,
) -> Iterator[httpx.Response]:
    """Send one request through the guard and yield the streaming response (headers read, body
    not yet). Redirects are followed only with ``follow_redirects`` (see the module docstring)."""
    current = parse_http_url(url, allow_private=allow_private).url
    hdrs = dict(headers or {})
    body = content
    with ExitStack() as stack:
        if client is None:
            client = stack.enter_context(
                guarded_client(allow_private=allow_private, timeout=timeout, verify=verify, resolver=resolver)
            )
        for hop in range(max_redirects + 1):
            with mapped_errors(f"{method} {current}"):
                request = client.build_request(method, current, headers=hdrs, content=body, timeout=timeout)
                response = client.send(request, stream=True)
            if not (follow_redirects and response.has_redirect_location):
                stack.callback(response.close)
                yield response
                return
            location = response.headers["location"]
            response.close()
            if hop == max_redirects:
                break
            try:
                target = str(response.url.join(location))
                nxt = parse_http_url(target, allow_private=allow_private)
            except (UrlNotAllowed, httpx.InvalidURL) as e:
                msg = e.message if isinstance(e, UrlNotAllowed) else str(e)
                raise UrlNotAllowed(f"redirect from {current} to {location!r} refused: {msg}") from None
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, body = "GET", None
                hdrs = {k: v for k, v in hdrs.items() if k.lower() not in ("content-type", "content-length")}
            if httpx.URL(nxt.url).netloc != httpx.URL(current).netloc or nxt.scheme != response.url.scheme:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() not in _SENSITIVE}
            current = nxt.url
        raise MediaUnreadable(f"{url}: more than {max_redirects} redirects")


@dataclass(frozen=True)
class SafeResponse:
    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str  # after redirects, if followed
    truncated: bool  # body longer than max_bytes and ``truncate=True``


def read_body(
    response: httpx.Response, sink: Spool, *, max_bytes: int, deadline: float | None, what: str
) -> int:
    """Stream a response body into ``sink`` under a byte cap and a wall-clock deadline."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise MediaTooLarge(f"{what} is {declared} bytes, more than the limit of {max_bytes}")
    with mapped_errors(what):
        # iter_bytes() without a chunk size yields each network read as it arrives, so the deadline
        # is checked even while a server drips bytes (a chunk size would buffer up to that size).
        return copy_capped(response.iter_bytes(), sink, max_bytes=max_bytes, deadline=deadline, what=what)


def safe_request(
    method: str, url: str, *, headers: Mapping[str, str] | None = None, content: bytes | None = None,
    timeout: float = 10.0, allow_private: bool = False, follow_redirects: bool = False,
    max_bytes: int = 1024 * 1024, truncate: bool = False, max_redirects: int = 5,
    total_timeout: float | None = None, verify: ssl.SSLContext | bool = True,
    resolver: Resolver | None = None,
) -> SafeResponse:
    """One guarded request with the whole body read (at most ``max_bytes``).

    Webhooks: ``safe_request("POST", url, headers=..., content=body, timeout=10,
    allow_private=..., truncate=True)`` — no redirects, any answer returned as is. Raises
    :class:`UrlNotAllowed` (refused URL or address), :class:`TransientError` (timeouts, network
    errors, body slower than ``total_timeout``, default ``3 * timeout``) and, unless ``truncate``,
    :class:`MediaTooLarge`.
    """
    deadline = time.monotonic() + (total_timeout if total_timeout is not None else 3 * timeout)
    with open_stream(
        method, url, headers=headers, content=content, timeout=timeout, allow_private=allow_private,
        follow_redirects=follow_redirects, max_redirects=max_redirects, verify=verify, resolver=resolver,
    ) as response:
        sink = Spool(max_bytes + 1)
        truncated = False
        try:
            if truncate:
                with mapped_errors(f"{method} {url}"):
                    for chunk in response.iter_bytes():
                        room = max_bytes - sink.size
                        sink.write(chunk[:room])
                        if len(chunk) > room:
                            truncated = True
                            break
                        if time.monotonic() > deadline:
                            raise TransientError(f"{method} {url}: answer took longer than the time allowed")
            else:
                read_body(response, sink, max_bytes=max_bytes, deadline=deadline, what=f"{method} {url}")
            data, _ = sink.take()
        finally:
            sink.close()
        return SafeResponse(response.status_code, response.headers, data or b"", str(response.url), truncated)
