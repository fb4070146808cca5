"""Fetch one media item into a :class:`MediaBlob`, whatever the URL scheme.

Every fetch re-validates the URL (the worker does not trust that the API did), enforces
``max_bytes`` while streaming (and up front when the source declares a length), retries transient
failures with backoff (:mod:`storage.retry`), and sniffs the bytes: what the bytes are decides,
not what the source claims. Error codes: media_not_found, media_unreadable, media_too_large,
unsupported_media, url_not_allowed, transient (retryable).
"""

from __future__ import annotations

import os
import ssl
import stat
import time
from pathlib import Path

import httpx

from storage.addresses import Resolver
from storage.blob import MediaBlob, Spool, copy_capped
from storage.config import StorageConfig
from storage.errors import (
    MediaNotFound,
    MediaTooLarge,
    MediaUnreadable,
    TransientError,
    UnsupportedMedia,
)
from storage.netguard import open_stream, read_body
from storage.retry import call_with_retries
from storage.s3 import S3_ERRORS, map_boto_error, s3_client
from storage.sniff import SNIFF_BYTES, Kind, sniff
from storage.urls import DataUrl, FileUrl, HttpUrl, S3Url, parse_media_url

CHUNK = 256 * 1024
_ACCEPT = "image/*, video/*;q=0.9, */*;q=0.1"


def open_media(
    url: str, config: StorageConfig, *, kind: Kind | None = None, resolver: Resolver | None = None,
    verify: ssl.SSLContext | bool = True, byte_range: tuple[int, int] | None = None,
) -> MediaBlob:
    """Fetch ``url`` and return its bytes as a :class:`MediaBlob` (close it when done).

    ``kind`` is the request item's declared type; bytes of the other kind, or bytes that are no
    image or video we know, raise :class:`UnsupportedMedia`. ``resolver`` and ``verify`` are for
    http(s) only (tests, private CAs). ``byte_range`` (offset, length) reads only those bytes of
    an ``s3://`` or ``file://`` object: a member of an uncompressed tar (WebDataset shards).
    """
    parsed = parse_media_url(url, config, kind=kind)
    if byte_range is not None:
        return _open_range(parsed, config, kind, byte_range)
    if isinstance(parsed, FileUrl):
        return _open_file(parsed, config, kind)
    if isinstance(parsed, DataUrl):
        spool = Spool(config.spool_bytes)
        spool.write(parsed.decode())
        return _finish(spool, parsed.url, parsed.mime, kind)
    if isinstance(parsed, S3Url):
        spool, content_type = call_with_retries(lambda: _get_s3(parsed, config), config, what=parsed.url)
        return _finish(spool, parsed.url, content_type, kind)
    assert isinstance(parsed, HttpUrl)
    spool, content_type = call_with_retries(
        lambda: _get_http(parsed, config, resolver, verify), config, what=parsed.url
    )
    return _finish(spool, parsed.url, content_type, kind)


def _check_kind(head: bytes, url: str, kind: Kind | None) -> tuple[Kind, str]:
    found = sniff(head)
    if found.kind is None or found.mime is None:
        raise UnsupportedMedia(
            f"{_short(url)}: not a recognised image or video format (first bytes {head[:12].hex(' ')})"
        )
    if kind is not None and found.kind != kind:
        raise UnsupportedMedia(f"{_short(url)}: the item says {kind!r} but the bytes are {found.mime}")
    return found.kind, found.mime


def _finish(spool: Spool, url: str, content_type: str | None, kind: Kind | None) -> MediaBlob:
    try:
        if spool.size == 0:
            raise MediaUnreadable(f"{_short(url)}: empty (0 bytes)")
        found_kind, mime = _check_kind(spool.head, url, kind)
        data, file = spool.take()
    except BaseException:
        spool.close()
        raise
    return MediaBlob(url=url, size=spool.size, kind=found_kind, mime=mime, content_type=content_type,
                     data=data, file=file)


def _short(url: str) -> str:
    return url if len(url) <= 80 else url[:60] + "…"


# --- byte ranges (tar members) -------------------------------------------------------------------
def _open_range(parsed: object, config: StorageConfig, kind: Kind | None, rng: tuple[int, int]) -> MediaBlob:
    offset, length = int(rng[0]), int(rng[1])
    if offset < 0 or length <= 0:
        raise MediaUnreadable(f"byte range {offset}+{length} is empty or negative")
    if length > config.max_bytes:
        raise MediaTooLarge(f"the byte range is {length} bytes, more than the limit of {config.max_bytes}")
    spool = Spool(config.spool_bytes)
    try:
        if isinstance(parsed, FileUrl):
            try:
                with open(parsed.path, "rb") as f:
                    f.seek(offset)
                    data = f.read(length)
            except FileNotFoundError:
                raise MediaNotFound(f"{parsed.url}: no such file") from None
            if len(data) != length:
                raise MediaUnreadable(f"{parsed.url}: shorter than the byte range {offset}+{length}")
            spool.write(data)
            url = parsed.url
        elif isinstance(parsed, S3Url):
            u = parsed

            def get() -> bytes:
                try:
                    resp = s3_client(config).get_object(Bucket=u.bucket, Key=u.key,
                                                        Range=f"bytes={offset}-{offset + length - 1}")
                    return resp["Body"].read()  # type: ignore[no-any-return]
                except S3_ERRORS as e:
                    raise map_boto_error(e, u.url, "GET") from e

            data = call_with_retries(get, config, what=u.url)
            if len(data) != length:
                raise MediaUnreadable(f"{u.url}: shorter than the byte range {offset}+{length}")
            spool.write(data)
            url = u.url
        else:
            raise MediaUnreadable("a byte range applies to s3:// and file:// objects only")
    except BaseException:
        spool.close()
        raise
    return _finish(spool, f"{url}#{offset}+{length}", None, kind)


# --- s3 ------------------------------------------------------------------------------------------
def _get_s3(u: S3Url, config: StorageConfig) -> tuple[Spool, str | None]:
    client = s3_client(config)
    spool = Spool(config.spool_bytes)
    try:
        try:
            resp = client.get_object(Bucket=u.bucket, Key=u.key)
        except S3_ERRORS as e:
            raise map_boto_error(e, u.url, "GET") from e
        body = resp["Body"]
        try:
            length = resp.get("ContentLength")
            if length is not None and length > config.max_bytes:
                raise MediaTooLarge(f"{u.url} is {length} bytes, more than the limit of {config.max_bytes}")
            deadline = time.monotonic() + config.total_timeout
            try:
                copy_capped(body.iter_chunks(CHUNK), spool, max_bytes=config.max_bytes, deadline=deadline,
                            what=u.url)
            except S3_ERRORS as e:
                raise TransientError(f"S3 GET {u.url}: body broke off ({type(e).__name__}: {e})") from e
        finally:
            body.close()
        return spool, resp.get("ContentType")
    except BaseException:
        spool.close()
        raise


# --- http(s) ---------------------------------------------------------------------------------------
def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _get_http(
    u: HttpUrl, config: StorageConfig, resolver: Resolver | None, verify: ssl.SSLContext | bool
) -> tuple[Spool, str | None]:
    timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout)
    spool = Spool(config.spool_bytes)
    try:
        with open_stream(
            "GET", u.url, headers={"Accept": _ACCEPT, "Accept-Encoding": "identity"}, timeout=timeout,
            allow_private=config.allow_private_urls, follow_redirects=True,
            max_redirects=config.max_redirects, verify=verify, resolver=resolver,
        ) as response:
            status = response.status_code
            what = f"GET {u.url}"
            if status in (404, 410):
                raise MediaNotFound(f"{what}: {status} {response.reason_phrase}")
            if status in (401, 403, 451):
                raise MediaNotFound(f"{what}: {status} {response.reason_phrase} (access denied)")
            if status in (408, 425, 429) or status >= 500:
                raise TransientError(f"{what}: {status} {response.reason_phrase}",
                                     retry_after=_retry_after(response))
            if status != 200:
                raise MediaUnreadable(f"{what}: unexpected answer {status} {response.reason_phrase}")
            read_body(response, spool, max_bytes=config.max_bytes,
                      deadline=time.monotonic() + config.total_timeout, what=what)
            return spool, response.headers.get("content-type")
    except BaseException:
        spool.close()
        raise


# --- file:// -------------------------------------------------------------------------------------
def _open_file(u: FileUrl, config: StorageConfig, kind: Kind | None) -> MediaBlob:
    """Local files are used in place (no copy). ``u.path`` is already the real path under the
    media root; O_NOFOLLOW refuses a symlink swapped in since the check."""
    try:
        # O_NONBLOCK: opening a FIFO someone placed under the root must not hang the worker.
        fd = os.open(u.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise MediaNotFound(f"{u.url}: no such file") from None
    except PermissionError:
        raise MediaNotFound(f"{u.url}: permission denied") from None
    except OSError as e:
        raise MediaUnreadable(f"{u.url}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MediaUnreadable(f"{u.url}: not a regular file")
        if st.st_size > config.max_bytes:
            raise MediaTooLarge(f"{u.url} is {st.st_size} bytes, more than the limit of {config.max_bytes}")
        if st.st_size == 0:
            raise MediaUnreadable(f"{u.url}: empty (0 bytes)")
        head = os.pread(fd, SNIFF_BYTES, 0)
    finally:
        os.close(fd)
    found_kind, mime = _check_kind(head, u.url, kind)
    return MediaBlob(url=u.url, size=st.st_size, kind=found_kind, mime=mime, content_type=None,
                     path=Path(u.path))


