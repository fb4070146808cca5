"""``data:`` URIs of images and videos, judged without decoding the payload.

``data:<image|video>/<subtype>[;param=value]*;base64,<payload>``: strict base64 (standard
alphabet, padded, no whitespace), the decoded size computed from the length before anything is
decoded, the declared type checked against the first bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Literal

from storage.errors import MediaTooLarge, UnsupportedMedia, UrlNotAllowed
from storage.sniff import Kind, mime_kind, sniff
from storage.url_syntax import check_basic, scheme_of

_TOKEN = r"[a-z0-9!#$&^_.+-]+"
_MIME = re.compile(rf"{_TOKEN}/{_TOKEN}")
_PARAM = re.compile(rf"{_TOKEN}=[^;,]*")
_B64_BODY = re.compile(r"[A-Za-z0-9+/]*")
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass(frozen=True)
class DataUrl:
    url: str
    mime: str
    kind: Kind
    size: int  # decoded bytes
    payload_start: int  # index in ``url`` where the base64 text begins
    scheme: Literal["data"] = "data"

    def decode(self) -> bytes:
        return base64.b64decode(self.url[self.payload_start :], validate=True)


# --- parsing ---------------------------------------------------------------------------------------
def parse_data_url(url: str, *, max_bytes: int, kind: Kind | None = None) -> DataUrl:
    """A base64 ``data:`` URI of an image or video, at most ``max_bytes`` once decoded."""
    url = check_basic(url)
    if scheme_of(url) != "data":
        raise UrlNotAllowed("not a data: URI")
    comma = url.find(",", 5, 5 + 1024)  # the header is short; never scan the payload for it
    if comma < 0:
        raise UrlNotAllowed("malformed data: URI: no ',' after the media type")
    params = [p.strip() for p in url[5:comma].split(";")]
    mime = params[0].lower()
    if not mime:
        raise UrlNotAllowed("data: URI has no media type (expected e.g. data:image/png;base64,...)")
    if params[-1].lower() != "base64" or len(params) < 2:
        raise UrlNotAllowed("data: URIs must be base64-encoded (';base64,' missing)")
    if not _MIME.fullmatch(mime):
        raise UrlNotAllowed(f"malformed media type {mime!r} in data: URI")
    for p in params[1:-1]:
        if not _PARAM.fullmatch(p.lower()):
            raise UrlNotAllowed(f"malformed parameter {p!r} in data: URI")
    declared = mime_kind(mime)
    if declared is None:
        raise UnsupportedMedia(f"data: URI media type {mime!r} is not image/* or video/*")
    if kind is not None and declared != kind:
        raise UnsupportedMedia(f"item type is {kind!r} but the data: URI declares {mime!r}")
    start = comma + 1
    n = len(url) - start
    if n == 0:
        raise UrlNotAllowed("data: URI has an empty payload")
    # Size from the length alone: every 4 characters are 3 bytes, less the padding.
    padding = 2 if url.endswith("==") else 1 if url.endswith("=") else 0
    if n % 4:
        raise UrlNotAllowed("invalid base64 in data: URI: length is not a multiple of 4 (padding missing?)")
    size = n // 4 * 3 - padding
    if size > max_bytes:
        raise MediaTooLarge(f"data: URI holds {size} bytes, more than the limit of {max_bytes}")
    # Validate the alphabet in place (no copy, no decode).
    m = _B64_BODY.match(url, start)
    if m is None or m.end() != len(url) - padding:
        bad = m.end() if m else start
        raise UrlNotAllowed(
            f"invalid base64 in data: URI at payload offset {bad - start}: {url[bad:bad + 1]!r} "
            "(only A-Z a-z 0-9 + / and final '=' padding are allowed; no whitespace, no URL-safe alphabet)"
        )
    if padding:
        last = _B64_ALPHABET.index(url[len(url) - padding - 1])
        if last % (16 if padding == 2 else 4):
            raise UrlNotAllowed("invalid base64 in data: URI: non-zero bits in the final padding")
    head_chars = min(n, 88)
    try:
        head = base64.b64decode(url[start : start + head_chars], validate=True)
    except binascii.Error as e:
        raise UrlNotAllowed(f"invalid base64 in data: URI: {e}") from None
    found = sniff(head)
    if found.kind is None:
        raise UnsupportedMedia(
            f"data: URI bytes are not a recognised image or video format (declared {mime})"
        )
    if found.kind != declared:
        raise UnsupportedMedia(f"data: URI declares {mime} but its bytes are {found.mime}")
    return DataUrl(url=url, mime=mime, kind=declared, size=size, payload_start=start)
