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
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")
R = TypeVar("R")
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


def _pass(src: Image.Image, size: tuple[int, int], workers: int,
          into: np.ndarray | None) -> Image.Image | None:
    """One separable Pillow pass (``src`` and ``size`` differ in one dimension only), cut into
    strips along the other dimension. Writes into ``into`` (uint8 array of the output) when
    given, else returns a new image."""
    w, h = src.size
    horizontal = size[1] == h  # only the width changes: rows are independent
    strips = _bounds(h if horizontal else w, workers)
    out = Image.new(src.mode, size) if into is None else None

    def run(ab: tuple[int, int]) -> None:
        a, b = ab
        if horizontal:
            piece = src.crop((0, a, w, b)).resize((size[0], b - a))
        else:
            piece = src.crop((a, 0, b, h)).resize((b - a, size[1]))
        if out is not None:
            out.paste(piece, (0, a) if horizontal else (a, 0))
        elif horizontal:
            into[a:b] = np.asarray(piece)  # type: ignore[index]
        else:
            into[:, a:b] = np.asarray(piece)  # type: ignore[index]

    _run_all(run, strips)
    return out


def map_parallel(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on the resize pool (in order; inline when ``workers`` <= 1 or
    there is a single item). ``fn`` must not itself wait on the pool."""
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    return list(_executor().map(fn, items))


def in_background(fn: Callable[[], None], workers: int | None = None) -> Callable[[], None]:
    """Run ``fn`` on the resize pool (inline when ``workers`` <= 1); returns a wait function
    that re-raises its exception."""
    workers = default_workers() if workers is None else workers
    if workers <= 1:
        fn()
        return lambda: None
    future = _executor().submit(fn)
    return lambda: future.result() and None


def _threaded(img: Image.Image, size: tuple[int, int], workers: int) -> bool:
    return (workers > 1 and img.mode in ("RGB", "L") and size[0] * size[1] >= _MIN_PIXELS_FOR_THREADS
            and size != img.size and _order_rule_holds())


def _middle(img: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """Size after Pillow's first pass."""
    return (img.width, size[1]) if vertical_first(img.size, size) else (size[0], img.height)


def resize(img: Image.Image, size: tuple[int, int], workers: int | None = None) -> Image.Image:
    """Same pixels as ``img.resize(size)`` (RGB/L images; other modes use Pillow directly)."""
    workers = default_workers() if workers is None else workers
    if not _threaded(img, size, workers):
        return img.resize(size)
    mid = _middle(img, size)
    first = img if mid == img.size else _pass(img, mid, workers, None)
    assert first is not None
    return first if mid == size else _pass(first, size, workers, None)  # type: ignore[return-value]


def resize_array(img: Image.Image, size: tuple[int, int], workers: int | None = None) -> np.ndarray:
    """``np.asarray(img.resize(size))`` without the extra copy: the last pass writes its strips
    straight into the array."""
    workers = default_workers() if workers is None else workers
    if not _threaded(img, size, workers):
        return np.asarray(img.resize(size))
    mid = _middle(img, size)
    out = np.empty((size[1], size[0], 3) if img.mode == "RGB" else (size[1], size[0]), np.uint8)
    if mid == size:  # a single (first) pass
        _pass(img, size, workers, out)
        return out
    first = img if mid == img.size else _pass(img, mid, workers, None)
    assert first is not None
    _pass(first, size, workers, out)
    return out


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
