"""Content sniffing from magic bytes: what the bytes are, whatever the source claims.

Only formats the engine decodes are recognised (Pillow for images, PyAV/decord for videos); all
else is ``kind=None``, which callers turn into ``unsupported_media``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["image", "video"]

# Enough for every signature below (EBML doc type sits within the first few dozen bytes).
SNIFF_BYTES = 64

# ISO-BMFF brands that are still images (HEIF/AVIF): not decodable by our pipeline as video.
_IMAGE_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
# QuickTime files may start with one of these atoms instead of ``ftyp``.
_QT_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


@dataclass(frozen=True)
class Sniffed:
    kind: Kind | None
    mime: str | None  # the canonical type of what was recognised; None when unknown


UNKNOWN = Sniffed(None, None)


def sniff(head: bytes) -> Sniffed:
    """Recognise the leading bytes (pass at least :data:`SNIFF_BYTES` when available)."""
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "image/png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("image", "image/gif")
    if head[:4] == b"RIFF" and len(head) >= 12:
        form = head[8:12]
        if form == b"WEBP":
            return Sniffed("image", "image/webp")
        if form == b"AVI ":
            return Sniffed("video", "video/x-msvideo")
        return UNKNOWN
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return Sniffed("image", "image/tiff")
    if head[:2] == b"BM" and len(head) >= 18:
        # "BM" alone is too weak (plenty of text starts so): require a known DIB header size.
        if int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
            return Sniffed("image", "image/bmp")
        return UNKNOWN
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return UNKNOWN  # HEIF/AVIF stills: not something we decode
        if brand == b"qt  ":
            return Sniffed("video", "video/quicktime")
        return Sniffed("video", "video/mp4")
    if len(head) >= 8 and head[4:8] in _QT_ATOMS:
        return Sniffed("video", "video/quicktime")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Sniffed("video", "video/webm" if b"webm" in head[:SNIFF_BYTES] else "video/x-matroska")
    return UNKNOWN


def mime_kind(mime: str) -> Kind | None:
    """``image/png`` → ``image``; anything not image/* or video/* → None."""
    top = mime.split("/", 1)[0].strip().lower()
    if top == "image":
        return "image"
    if top == "video":
        return "video"
    return None
