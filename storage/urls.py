"""Parse and validate URLs at the door: media URLs, webhook URLs, manifest and output URLs.

Pure (no I/O) except DNS when ``resolve=True``. Every refusal is a typed error with a message
that says exactly what is wrong. The parsed value carries a normalised URL that later stages
(the worker's fetch) use as is.

Accepted forms:
- ``s3://bucket/key``: current S3 bucket naming rules; key taken literally (no %-decoding, ``?``
  and ``#`` are part of the key), 1..1024 UTF-8 bytes; bucket must be in ``allowed_buckets``
  when that list is set.
- ``https://`` / ``http://``: host required, no ``user:pass@``, port 1..65535, IPv4 in any
  ``inet_aton`` spelling normalised to dotted decimal, IPv6 without zone ids, IDNA names.
  Address policy from :mod:`storage.addresses`.
- ``data:<image|video>/<subtype>;base64,...``: see :mod:`storage.data_urls`.
- ``file:///abs/path`` (or ``file://localhost/...``): only when local files are allowed, no ``..``
  segment, and the real path (symlinks resolved) under ``media_root``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from storage.addresses import IPAddress, Resolver, check_host, parse_ip_host
from storage.config import StorageConfig
from storage.data_urls import DataUrl, parse_data_url
from storage.errors import UrlNotAllowed
from storage.sniff import Kind
from storage.url_syntax import FORBIDDEN_CHARS, MAX_URL_CHARS, check_basic, scheme_of

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_BAD_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_BAD_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True)
class S3Url:
    url: str
    bucket: str
    key: str
    scheme: Literal["s3"] = "s3"


@dataclass(frozen=True)
class HttpUrl:
    url: str  # normalised: canonical host spelling, no fragment
    scheme: Literal["http", "https"]
    host: str  # ASCII, lower case, IPv6 without brackets
    port: int
    ip: IPAddress | None  # when the host is an IP literal
    addresses: tuple[IPAddress, ...] = ()  # filled when resolved at the door


@dataclass(frozen=True)
class FileUrl:
    url: str
    path: Path  # real path, under the media root
    scheme: Literal["file"] = "file"


MediaUrl = S3Url | HttpUrl | DataUrl | FileUrl
ObjectUrl = S3Url | FileUrl


# --- s3:// -------------------------------------------------------------------------------------
def check_bucket_name(bucket: str) -> None:
    if not _BUCKET.fullmatch(bucket):
        raise UrlNotAllowed(
            f"invalid S3 bucket name {bucket!r}: 3-63 characters of a-z, 0-9, '.', '-', "
            "starting and ending with a letter or digit"
        )
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        raise UrlNotAllowed(f"invalid S3 bucket name {bucket!r}: adjacent '.'/'-' characters")
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", bucket):
        raise UrlNotAllowed(f"invalid S3 bucket name {bucket!r}: formatted as an IP address")
    if bucket.startswith(_BUCKET_BAD_PREFIXES) or bucket.endswith(_BUCKET_BAD_SUFFIXES):
        raise UrlNotAllowed(f"invalid S3 bucket name {bucket!r}: reserved prefix or suffix")


def parse_s3_url(url: str, config: StorageConfig, *, prefix: bool = False) -> S3Url:
    """``s3://bucket/key``. With ``prefix=True`` (output locations) the key may be empty or end
    with ``/``; otherwise a key naming one object is required."""
    url = check_basic(url)
    if scheme_of(url) != "s3" or not url[3:5] == "//":
        raise UrlNotAllowed(f"not an s3:// URL: {url[:40]!r}")
    if len(url) > MAX_URL_CHARS:
        raise UrlNotAllowed(f"URL longer than {MAX_URL_CHARS} characters")
    bucket, _, key = url[5:].partition("/")
    check_bucket_name(bucket)
    if config.allowed_buckets and bucket not in config.allowed_buckets:
        raise UrlNotAllowed(
            f"bucket {bucket!r} is not one of the allowed buckets (CAPTIONQ_S3_ALLOWED_BUCKETS)"
        )
    if not key and not prefix:
        raise UrlNotAllowed(f"s3 URL names no object: expected s3://{bucket}/<key>")
    if prefix and key and not key.endswith("/"):
        key += "/"
    if len(key.encode("utf-8", "surrogatepass")) > 1024:
        raise UrlNotAllowed("S3 key longer than 1024 bytes")
    if re.search(r"[\x00-\x1f\x7f]", key):
        raise UrlNotAllowed("S3 key contains control characters")
    return S3Url(url=f"s3://{bucket}/{key}", bucket=bucket, key=key)


# --- http(s):// ----------------------------------------------------------------------------------
def _normalise_name(host: str) -> str:
    try:
        ascii_host = host.encode("ascii").decode() if host.isascii() else _idna(host)
    except UnicodeError:
        raise UrlNotAllowed(f"host {host!r} is not a valid internationalised domain name") from None
    ascii_host = ascii_host.lower().rstrip(".")
    if not ascii_host or len(ascii_host) > 253:
        raise UrlNotAllowed("host name empty or longer than 253 characters")
    for label in ascii_host.split("."):
        if not _LABEL.fullmatch(label):
            raise UrlNotAllowed(f"invalid host name {host!r}")
    return ascii_host


def _idna(host: str) -> str:
    import idna  # a dependency of httpx

    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise UnicodeError(str(e)) from None


def parse_http_url(
    url: str, *, allow_private: bool, resolve: bool = False, resolver: Resolver | None = None
) -> HttpUrl:
    """An ``https://`` or ``http://`` URL for media or a webhook. Literal addresses and
    special names are checked here; with ``resolve=True`` the name's addresses are checked too
    (the connection is checked again anyway, see :mod:`storage.netguard`)."""
    url = check_basic(url)
    scheme = scheme_of(url)
    if scheme not in ("http", "https"):
        raise UrlNotAllowed(f"expected an https:// or http:// URL, got scheme {scheme or '(none)'!r}")
    if len(url) > MAX_URL_CHARS:
        raise UrlNotAllowed(f"URL longer than {MAX_URL_CHARS} characters")
    if FORBIDDEN_CHARS.search(url):
        raise UrlNotAllowed("URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise UrlNotAllowed(f"malformed URL: {e}") from None
    if not url[len(scheme) + 1 :].startswith("//") or not parts.netloc:
        raise UrlNotAllowed(f"{scheme} URL has no host")
    if "@" in parts.netloc:
        raise UrlNotAllowed("credentials in URLs (user:password@host) are not allowed")
    default_port = 443 if scheme == "https" else 80
    raw_host, port = _split_netloc(parts.netloc, default_port)
    try:
        ip = parse_ip_host(raw_host)
    except ValueError as e:
        raise UrlNotAllowed(str(e)) from None
    if raw_host.startswith("[") and ip is None:
        raise UrlNotAllowed(f"invalid IPv6 literal {raw_host!r}")
    host = str(ip) if ip is not None else _normalise_name(raw_host)
    if ip is None:  # IDNA mapping can turn a "name" into an address (fullwidth digits, "。")
        try:
            ip = parse_ip_host(host)
        except ValueError as e:
            raise UrlNotAllowed(str(e)) from None
        host = str(ip) if ip is not None else host
    addrs = check_host(host, port, allow_private=allow_private, resolve=resolve, resolver=resolver)
    netloc = f"[{host}]" if ":" in host else host
    if port != default_port:
        netloc += f":{port}"
    path = parts.path or "/"
    normalised = f"{scheme}://{netloc}{path}" + (f"?{parts.query}" if parts.query else "")
    return HttpUrl(url=normalised, scheme=scheme, host=host, port=port, ip=ip,  # type: ignore[arg-type]
                   addresses=tuple(addrs) if ip is None else ())


def _split_netloc(netloc: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` / ``[v6][:port]`` → (host as written, port)."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise UrlNotAllowed(f"unterminated IPv6 literal in {netloc!r}")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UrlNotAllowed(f"unexpected characters after the IPv6 literal in {netloc!r}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_raw = netloc.partition(":")
        port_text = port_text_raw if colon else None
    if not host:
        raise UrlNotAllowed("URL has no host")
    if port_text is None:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise UrlNotAllowed(f"invalid port {port_text!r}: must be a number 1-65535")
    return host, int(port_text)


# --- file:// -------------------------------------------------------------------------------------
def parse_file_url(url: str, *, media_root: Path, local_files_allowed: bool) -> FileUrl:
    """``file:///path`` under ``media_root`` (real paths compared, so symlinks cannot escape)."""
    url = check_basic(url)
    if scheme_of(url) != "file":
        raise UrlNotAllowed("not a file:// URL")
    if not local_files_allowed:
        raise UrlNotAllowed("file:// URLs are only accepted in the local mode (captionq up)")
    rest = url[5:]
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if authority.lower() not in ("", "localhost"):
            raise UrlNotAllowed(f"file:// URL names a remote host {authority!r}; only local files are read")
        rest = slash + rest
    if not rest.startswith("/"):
        raise UrlNotAllowed("file URL path must be absolute (file:///path/to/file)")
    if "?" in rest or "#" in rest:
        raise UrlNotAllowed("file URLs take no query or fragment (write '?' as %3F, '#' as %23)")
    try:
        path = unquote(rest, errors="strict")
    except UnicodeDecodeError:
        raise UrlNotAllowed("file URL path is not valid UTF-8 once %-decoded") from None
    if "\x00" in path or "\\" in path:
        raise UrlNotAllowed("file URL path contains a NUL byte or a backslash")
    if ".." in path.split("/"):
        raise UrlNotAllowed("file URL path contains a '..' segment")
    root = os.path.realpath(media_root)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        if os.path.commonpath([root, os.path.normpath(path)]) == root:
            raise UrlNotAllowed(f"{path} resolves through a symlink to outside the media root {root}")
        raise UrlNotAllowed(f"{path} is outside the media root {root}")
    return FileUrl(url="file://" + path, path=Path(real))


def _file_url(url: str, config: StorageConfig) -> FileUrl:
    return parse_file_url(url, media_root=config.media_root, local_files_allowed=config.local_files_allowed)


# --- dispatch ------------------------------------------------------------------------------------
def parse_media_url(
    url: str, config: StorageConfig, *, kind: Kind | None = None, resolve: bool = False,
    resolver: Resolver | None = None,
) -> MediaUrl:
    """Judge a media URL at submission. ``kind`` is the item's declared type (checked against a
    data: URI's media type and first bytes); ``resolve`` also checks the host's DNS addresses."""
    url = check_basic(url)
    scheme = scheme_of(url)
    if scheme == "s3":
        return parse_s3_url(url, config)
    if scheme in ("http", "https"):
        return parse_http_url(
            url, allow_private=config.allow_private_urls, resolve=resolve, resolver=resolver
        )
    if scheme == "data":
        return parse_data_url(url, max_bytes=config.max_data_uri_bytes, kind=kind)
    if scheme == "file":
        return _file_url(url, config)
    accepted = "s3://, https://, http://, data:" + (", file://" if config.local_files_allowed else "")
    shown = repr(scheme) if scheme else "none"
    raise UrlNotAllowed(f"unsupported URL scheme {shown}; accepted: {accepted}")


def parse_object_url(url: str, config: StorageConfig, *, prefix: bool = False) -> ObjectUrl:
    """Where manifests are read and results written: ``s3://`` or (local mode) ``file://``."""
    url = check_basic(url)
    scheme = scheme_of(url)
    if scheme == "s3":
        return parse_s3_url(url, config, prefix=prefix)
    if scheme == "file":
        return _file_url(url, config)
    raise UrlNotAllowed(f"unsupported URL scheme {scheme or 'none'!r} here; use s3://bucket/key")


def parse_webhook_url(url: str, *, allow_private: bool, resolve: bool = False) -> HttpUrl:
    """Webhook URLs pass the same checks as media URLs (API.md)."""
    return parse_http_url(url, allow_private=allow_private, resolve=resolve)
