"""Pillow's ``Image.resize`` (default resample), bit for bit, spread over threads.

Pillow resamples in two separable passes, each releasing the GIL: a horizontal pass (every output
row depends only on the same input row) and a vertical pass (every output column depends only on
the same input column), with 8-bit rounding in between. Pillow 13 runs the vertical pass first when
``(H - h) > 0 and (H - h) > 2 * (W - w)`` ("height scaled down much more than width"), otherwise
the horizontal pass first. Doing the same two passes ourselves, each one cut into strips along
the axis it does not touch, gives exactly Pillow's result, and the strips can run in parallel.

Because the pass order is a Pillow implementation detail, :func:`_order_rule_holds` checks it
against the installed Pillow once (a few tiny probe images); if it does not hold, every call falls
back to plain ``img.resize`` — slower, never different.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from PIL import Image

_MIN_PIXELS_FOR_THREADS = 448 * 448  # below this, thread hand-off costs more than it saves
_MIN_STRIP = 32
_lock = threading.Lock()
_pool: Executor | None = None


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _executor() -> Executor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=default_workers(), thread_name_prefix="resize")
        return _pool


def vertical_first(src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> bool:
    """Pillow 13's choice of pass order (Resample.c, ImagingResampleInner)."""
    (w_in, h_in), (w_out, h_out) = src_wh, dst_wh
    return (h_in - h_out) > 0 and (h_in - h_out) > (w_in - w_out) * 2


def _bounds(n: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, n // _MIN_STRIP or 1))
    step = -(-n // parts)
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _run_all(fn: Callable[[tuple[int, int]], None], strips: list[tuple[int, int]]) -> None:
    if len(strips) == 1:
        fn(strips[0])
    else:
        for f in [_executor().submit(fn, ab) for ab in strips]:
            f.result()


def _hpass(src: Image.Image, width: int, workers: int) -> Image.Image:
    """Horizontal-only resize to ``width``, in row strips."""
    if src.width == width:
        return src
    w, h = src.size
    strips = _bounds(h, workers)
    out = Image.new(src.mode, (width, h))

    def run(ab: tuple[int, int]) -> None:
        a, b = ab
        out.paste(src.crop((0, a, w, b)).resize((width, b - a)), (0, a))

    _run_all(run, strips)
    return out


def _vpass(src: Image.Image, height: int, workers: int) -> Image.Image:
    """Vertical-only resize to ``height``, in column strips."""
    if src.height == height:
        return src
    w, h = src.size
    strips = _bounds(w, workers)
    out = Image.new(src.mode, (w, height))

    def run(ab: tuple[int, int]) -> None:
        a, b = ab
        out.paste(src.crop((a, 0, b, h)).resize((b - a, height)), (a, 0))

    _run_all(run, strips)
    return out


def resize(img: Image.Image, size: tuple[int, int], workers: int | None = None) -> Image.Image:
    """Same pixels as ``img.resize(size)`` (RGB/L images; other modes use Pillow directly)."""
    workers = default_workers() if workers is None else workers
    if (workers <= 1 or img.mode not in ("RGB", "L") or size[0] * size[1] < _MIN_PIXELS_FOR_THREADS
            or size == img.size or not _order_rule_holds()):
        return img.resize(size)
    if vertical_first(img.size, size):
        return _hpass(_vpass(img, size[1], workers), size[0], workers)
    return _vpass(_hpass(img, size[0], workers), size[1], workers)


@lru_cache(maxsize=1)
def _order_rule_holds() -> bool:
    rng = np.random.default_rng(12345)
    probes = [((40, 90), (50, 30)), ((40, 90), (20, 80)), ((90, 40), (30, 50)), ((30, 30), (70, 20)),
              ((60, 50), (40, 45)), ((25, 80), (60, 30))]
    for (w, h), out in probes:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ref = np.asarray(img.resize(out))
        if vertical_first((w, h), out):
            mine = img.resize((w, out[1])).resize(out)
        else:
            mine = img.resize((out[0], h)).resize(out)
        if not np.array_equal(ref, np.asarray(mine)):
            return False
    return True
