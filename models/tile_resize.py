"""Exact Pillow resizes of uint8 RGB arrays on the compiled loops of :mod:`models.resample`:
two passes in Pillow's order, each cut into row strips run in parallel (the loops release the
GIL), the last pass optionally writing normalised float32 tiles directly.

Used only when :func:`available` — numba imports and :func:`self_check` finds the loops equal
to the installed Pillow on probe images — otherwise callers keep Pillow's own ``resize``.

Shapes: ``src`` uint8 ``[H, W, 3]`` C-contiguous; ``tiles`` float32 ``[rows*cols, 3, S, S]``
(row-major grid, ``S*cols x S*rows`` = the target size); ``lut`` float32 ``[3, 256]``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import numpy as np

from models import pil_resize

log = logging.getLogger(__name__)
_MIN_ROWS_PER_STRIP = 16


def _strips(n: int, workers: int, fn: Callable[[int, int], None]) -> None:
    """``fn(a, b)`` over row ranges covering ``0:n``: the first range on this thread, the rest
    on the shared resize pool (so a pool thread busy with other work never stalls us)."""
    parts = max(1, min(workers, n // _MIN_ROWS_PER_STRIP))
    step = -(-n // parts)
    ranges = [(a, min(n, a + step)) for a in range(0, n, step)]
    wait = [pil_resize.in_background(functools.partial(fn, a, b), workers) for a, b in ranges[1:]]
    fn(*ranges[0])
    for w in wait:
        w()


def _pass_u8(src: np.ndarray, size: tuple[int, int], workers: int) -> np.ndarray:
    """One Pillow pass (``size`` differs from ``src``'s in one dimension): the uint8 result."""
    from models import resample as R

    (h, w), (tw, th) = src.shape[:2], size
    out = np.empty((th, tw, 3), np.uint8)
    if th != h:
        bounds, kk = R.coefficients(h, th)
        flat_in, flat_out = src.reshape(h, -1), out.reshape(th, -1)
        _strips(th, workers, lambda a, b: R.vertical(flat_in, bounds, kk, flat_out, a, b))
    else:
        bounds, kk = R.coefficients(w, tw)
        _strips(h, workers, lambda a, b: R.horizontal(src, bounds, kk, out, a, b))
    return out


def _first_pass(src: np.ndarray, size: tuple[int, int], workers: int) -> np.ndarray:
    """Pillow's first pass when both dimensions change; returns the uint8 intermediate."""
    (h, w), (tw, th) = src.shape[:2], size
    return _pass_u8(src, (w, th) if pil_resize.vertical_first((w, h), size) else (tw, h), workers)


def resize_into_tiles(src: np.ndarray, size: tuple[int, int], tiles: np.ndarray, cols: int,
                      lut: np.ndarray, workers: int) -> None:
    """``tiles[k, c] = lut[c][tile k of np.asarray(Image.fromarray(src).resize(size))]``."""
    from models import resample as R

    src = np.ascontiguousarray(src)
    (h, w), (tw, th) = src.shape[:2], size
    if (tw, th) == (w, h):
        _strips(h, workers, lambda a, b: R.copy_to_tiles(src, lut, tiles, cols, a, b))
        return
    mid = _first_pass(src, size, workers) if tw != w and th != h else src
    mh, mw = mid.shape[:2]
    if mh != th:  # the height pass is the last one
        bounds, kk = R.coefficients(mh, th)
        flat = mid.reshape(mh, -1)
        _strips(th, workers, lambda a, b: R.vertical_to_tiles(flat, bounds, kk, lut, tiles, cols, a, b))
    else:
        bounds, kk = R.coefficients(mw, tw)
        _strips(th, workers, lambda a, b: R.horizontal_to_tiles(mid, bounds, kk, lut, tiles, cols, a, b))


def resize_u8(src: np.ndarray, size: tuple[int, int], workers: int = 1) -> np.ndarray:
    """``np.asarray(Image.fromarray(src).resize(size))`` for uint8 ``[H, W, 3]``."""
    src = np.ascontiguousarray(src)
    (h, w), (tw, th) = src.shape[:2], size
    if (tw, th) == (w, h):
        return src.copy()
    mid = _first_pass(src, size, workers) if tw != w and th != h else src
    return _pass_u8(mid, size, workers)


# Sizes chosen to cover both pass orders, single passes, up- and down-scaling by large factors,
# 1-pixel edges and windows clamped at both borders.
_PROBES = [((40, 90), (50, 30)), ((40, 90), (20, 80)), ((90, 40), (30, 50)), ((30, 30), (70, 20)),
           ((60, 50), (40, 45)), ((25, 80), (60, 30)), ((1, 1), (448, 448)), ((37, 1000), (448, 5376)),
           ((1000, 37), (448, 448)), ((333, 777), (896, 2240)), ((640, 480), (1792, 1344)),
           ((1920, 1080), (448, 448)), ((3, 500), (7, 11)), ((448, 448), (448, 896)),
           ((500, 448), (448, 448))]


@functools.lru_cache(maxsize=1)
def self_check() -> bool:
    """True when the compiled loops give the installed Pillow's bytes on every probe."""
    from PIL import Image

    rng = np.random.default_rng(20261126)
    for (w, h), size in _PROBES:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(arr).resize(size))
        for workers in (1, 3):
            if not np.array_equal(resize_u8(arr, size, workers), ref):
                log.warning("compiled resize differs from Pillow %s on %s -> %s; using Pillow",
                            Image.__version__, (w, h), size)
                return False
    return True


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether the compiled path can be used (numba importable and :func:`self_check` passes)."""
    try:
        import models.resample  # noqa: F401  (numba compiles lazily, on first use)
    except ImportError as e:
        log.info("numba not available (%s); image resizes use Pillow", e)
        return False
    try:
        return self_check()  # the first call compiles (a few seconds; cached on disk after)
    except Exception:  # e.g. no writable numba cache directory: Pillow is slower, never wrong
        log.warning("compiled resize unavailable; image resizes use Pillow", exc_info=True)
        return False
