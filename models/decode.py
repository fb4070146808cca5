"""Image bytes to an RGB PIL image, as the model card's ``Image.open(f).convert('RGB')``, with
typed errors (:mod:`models.errors`) for everything a user can send: empty, truncated or non-image
bytes, decompression bombs, modes Pillow cannot convert. EXIF orientation is *not* applied here
(the official code does not, QUIRKS 10): :func:`apply_exif_orientation` is for callers that want
upright images (the service does)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import MediaTooLarge, MediaUnreadable, UnsupportedMedia

_HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _scale_to_u8(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float greyscale -> 8-bit L. Deliberate deviation: Pillow's
    ``convert('RGB')`` clips these at 255 (a 16-bit photo comes out almost white); we rescale:
    integers <= 255 are kept, <= 65535 are mapped by v*255/65535, floats in [0, 1] by v*255,
    anything else by min-max over the image."""
    a = np.asarray(img).astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        a = a * (255.0 / 65535.0)
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img.convert('RGB')`` exactly as the official ``load_image`` (alpha dropped without
    compositing, palette transparency ignored, L replicated, CMYK/YCbCr converted by Pillow),
    except for high-bit-depth greyscale (see :func:`_scale_to_u8`). Modes Pillow cannot convert
    directly go through RGBA; failing that :class:`UnsupportedMedia`."""
    if img.mode == "RGB":
        return img
    if img.mode in _HIGH_BIT_DEPTH:
        return _scale_to_u8(img).convert("RGB")
    if img.mode == "P" and isinstance(img.info.get("transparency"), bytes):
        # Pillow warns (UserWarning) and then ignores per-entry palette alpha when converting to
        # RGB; drop it first on a copy: same pixels, and no warning to trip a warnings-as-errors
        # filter (changing filters here would not be thread-safe).
        img = img.copy()
        del img.info["transparency"]
    try:
        return img.convert("RGB")
    except (ValueError, OSError):
        pass
    for via in ("RGBA", "LA", "L"):
        try:
            return img.convert(via).convert("RGB")
        except (ValueError, OSError):
            continue
    raise UnsupportedMedia(f"cannot convert image mode {img.mode!r} to RGB")


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise MediaTooLarge(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")


def decode_image(data: bytes | bytearray | memoryview, *, max_pixels: int | None = None) -> Image.Image:
    """Bytes -> RGB PIL image, as ``Image.open(f).convert('RGB')`` (first frame of animations,
    no EXIF rotation).

    Errors: empty, non-image, truncated or corrupt bytes -> :class:`MediaUnreadable`; more than
    ``max_pixels`` (default: Pillow's ``Image.MAX_IMAGE_PIXELS``, None = no limit) ->
    :class:`MediaTooLarge`. The limit is checked here explicitly, so the outcome does not depend
    on the process's warning filters; Pillow's own ``DecompressionBombError`` and a
    ``DecompressionBombWarning`` turned into an exception by a filter are also mapped to
    :class:`MediaTooLarge`. (No warning filters are changed: that is not thread-safe.)
    """
    if not data:
        raise MediaUnreadable("empty image data")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        img = Image.open(io.BytesIO(bytes(data)))
        _check_pixels(img.width, img.height, limit)
        img.load()
        return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaTooLarge(f"image too large: {e}") from None
    except UnidentifiedImageError:
        raise MediaUnreadable("data is not a recognised image format") from None
    except MemoryError:
        raise MediaTooLarge("not enough memory to decode the image") from None
    except (MediaTooLarge, UnsupportedMedia):
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise MediaUnreadable(f"cannot decode image: {type(e).__name__}: {e}") from None


def apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip ``img`` upright according to its EXIF Orientation tag (a new image; the input
    unchanged when there is no tag or the EXIF block is unreadable). Not part of the official
    preprocessing: the service applies it before handing the image to the engine."""
    try:
        out = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must never fail a job
        return img
    return img if out is None else out
