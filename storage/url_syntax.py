"""The first checks every URL gets, whatever its scheme (shared by :mod:`storage.urls` and
:mod:`storage.data_urls`)."""

from __future__ import annotations

import re

from storage.errors import UrlNotAllowed

MAX_URL_CHARS = 8192  # for every scheme but data:
FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


def scheme_of(url: str) -> str:
    head, sep, _ = url.partition(":")
    return head.lower() if sep and head.isascii() and head.replace("+", "").isalnum() else ""


def check_basic(url: object) -> str:
    if not isinstance(url, str) or not url:
        raise UrlNotAllowed("URL must be a non-empty string")
    if url != url.strip():
        raise UrlNotAllowed("URL has leading or trailing whitespace")
    return url
