"""Pillow's bicubic ``Image.resize`` of 8-bit RGB images, bit for bit, as compiled loops.

Why this exists: preprocessing time is almost all Pillow's resample, whose C loops are scalar.
The same integer arithmetic written so that the compiler can vectorise it (numba/LLVM) gives
the same bytes several times faster, and lets the last pass write normalised float32 tiles
directly (no uint8 image, no crops, no separate normalisation pass).

What is reproduced (Pillow's ``libImaging/Resample.c``, 8 bits per channel):

- ``precompute_coeffs``: ``scale = in/out``, ``support = 2 * max(scale, 1)``,
  ``ksize = 2*ceil(support) + 1``; per output pixel ``center = (x + 0.5) * scale``, window
  ``[trunc(center - support + 0.5), trunc(center + support + 0.5))`` clamped to the input,
  bicubic weights (a = -0.5) at ``(i - center + 0.5) / max(scale, 1)``, divided by their
  running sum, then fixed point: ``trunc(w * 2**22 ± 0.5)``;
- each pass: ``acc = 2**21 + sum(pixel * k)`` in 32-bit integers, ``clip(acc >> 22, 0, 255)``;
- two passes with 8-bit rounding in between; the vertical one first when the height shrinks
  much more than the width (:func:`models.pil_resize.vertical_first`).

Nothing here is trusted blindly: :func:`self_check` compares against the installed Pillow on
probe images, and :mod:`models.preprocess` uses these loops only when it passes.

Shapes: images are uint8 ``[H, W, 3]`` (C order); tile outputs are float32 ``[N, 3, S, S]``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit

PRECISION_BITS = 22  # Pillow: 32 - 8 (pixel) - 2 (headroom for negative lobes)
_HALF = 1 << (PRECISION_BITS - 1)


@njit(cache=True, nogil=True)
def _bicubic(x: float) -> float:  # Pillow's bicubic_filter, a = -0.5, same operation order
    if x < 0.0:
        x = -x
    if x < 1.0:
        return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return 0.0


@njit(cache=True, nogil=True)
def _coeffs(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """bounds int32 [out, 2] = (first input index, taps); kk int32 [out, ksize] fixed point."""
    scale = float(in_size) / out_size
    filterscale = scale if scale >= 1.0 else 1.0
    support = 2.0 * filterscale
    ksize = math.ceil(support) * 2 + 1  # an int in numba, as in Python
    bounds = np.zeros((out_size, 2), np.int32)
    kk = np.zeros((out_size, ksize), np.int32)
    pre = np.zeros(ksize, np.float64)
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        ww = 0.0
        xmin = int(center - support + 0.5)  # C cast: truncation toward zero
        if xmin < 0:
            xmin = 0
        xmax = int(center + support + 0.5)
        if xmax > in_size:
            xmax = in_size
        xmax -= xmin
        for x in range(xmax):
            w = _bicubic((x + xmin - center + 0.5) * ss)
            pre[x] = w
            ww += w
        for x in range(xmax):
            w = pre[x] / ww if ww != 0.0 else pre[x]
            kk[xx, x] = int(-0.5 + w * (1 << 22)) if w < 0.0 else int(0.5 + w * (1 << 22))
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax
    return bounds, kk


@lru_cache(maxsize=256)
def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bicubic (bounds, fixed-point weights) for one axis; cached (sizes repeat)."""
    return _coeffs(in_size, out_size)


@njit(cache=True, nogil=True)
def _clip8(acc: np.int32) -> np.uint8:
    v = acc >> 22
    return np.uint8(0 if v < 0 else (255 if v > 255 else v))


@njit(cache=True, nogil=True)
def _accumulate(rows: np.ndarray, first: int, taps: int, weights: np.ndarray, acc: np.ndarray,
                n: int) -> None:
    # acc[:n] = 2**21 + sum_j weights[j] * rows[first + j][:n]: one weight per whole row, so the
    # inner loop is a plain multiply-add over contiguous bytes, which LLVM vectorises.
    for i in range(n):
        acc[i] = _HALF
    for j in range(taps):
        k = weights[j]
        row = rows[first + j]
        for i in range(n):
            acc[i] += np.int32(row[i]) * k


_BLOCK_ROWS = 16  # rows per width-pass block: 48 int32 accumulators, a few vector registers


@njit(cache=True, nogil=True)
def horizontal(src: np.ndarray, bounds: np.ndarray, kk: np.ndarray, out: np.ndarray,
               y0: int, y1: int) -> None:
    """Rows ``y0:y1`` of the width pass: ``src`` u8 [H, W, 3] -> ``out`` u8 [H, W', 3].

    Pillow walks each row pixel by pixel; here a block of rows is first transposed into a small
    buffer (``buf[x] = the block's bytes of column x``), so that every tap is one multiply-add
    over a contiguous vector of 3 x rows accumulators (same integers, vectorisable)."""
    w = src.shape[1]
    buf = np.empty((w, _BLOCK_ROWS * 3), np.uint8)
    acc = np.empty(_BLOCK_ROWS * 3, np.int32)
    for yb in range(y0, y1, _BLOCK_ROWS):
        rows = min(_BLOCK_ROWS, y1 - yb)
        n = rows * 3
        for r in range(rows):
            row = src[yb + r]
            for x in range(w):
                buf[x, r * 3] = row[x, 0]
                buf[x, r * 3 + 1] = row[x, 1]
                buf[x, r * 3 + 2] = row[x, 2]
        for xx in range(out.shape[1]):
            _accumulate(buf, bounds[xx, 0], bounds[xx, 1], kk[xx], acc, n)
            for r in range(rows):
                o = out[yb + r, xx]
                o[0] = _clip8(acc[r * 3])
                o[1] = _clip8(acc[r * 3 + 1])
                o[2] = _clip8(acc[r * 3 + 2])


@njit(cache=True, nogil=True)
def _vertical_row(src: np.ndarray, bounds: np.ndarray, kk: np.ndarray, yy: int,
                  acc: np.ndarray, dst: np.ndarray) -> None:
    # One output row of the height pass over flattened rows (W*3 bytes).
    _accumulate(src, bounds[yy, 0], bounds[yy, 1], kk[yy], acc, acc.shape[0])
    for i in range(acc.shape[0]):
        dst[i] = _clip8(acc[i])


@njit(cache=True, nogil=True)
def vertical(src: np.ndarray, bounds: np.ndarray, kk: np.ndarray, out: np.ndarray,
             y0: int, y1: int) -> None:
    """Output rows ``y0:y1`` of the height pass: ``src`` u8 [H, W*3] -> ``out`` u8 [H', W*3]."""
    acc = np.empty(src.shape[1], np.int32)
    for yy in range(y0, y1):
        _vertical_row(src, bounds, kk, yy, acc, out[yy])


@njit(cache=True, nogil=True)
def _row_to_tiles(row: np.ndarray, yy: int, lut: np.ndarray, tiles: np.ndarray, cols: int) -> None:
    # row: u8 [W*3] of the resized image; tiles: f32 [rows*cols, 3, S, S], row-major grid.
    s = tiles.shape[2]
    base = (yy // s) * cols
    ys = yy % s
    for tx in range(cols):
        t = tiles[base + tx]
        off = tx * s * 3
        for c in range(3):
            lc = lut[c]
            dst = t[c, ys]
            for xs in range(s):
                dst[xs] = lc[row[off + xs * 3 + c]]


@njit(cache=True, nogil=True)
def vertical_to_tiles(src: np.ndarray, bounds: np.ndarray, kk: np.ndarray, lut: np.ndarray,
                      tiles: np.ndarray, cols: int, y0: int, y1: int) -> None:
    """Height pass fused with cutting and normalising: output rows ``y0:y1`` of the resized
    image go straight into ``tiles`` (``lut`` f32 [3, 256]: the normalised value per byte)."""
    acc = np.empty(src.shape[1], np.int32)
    buf = np.empty(src.shape[1], np.uint8)
    for yy in range(y0, y1):
        _vertical_row(src, bounds, kk, yy, acc, buf)
        _row_to_tiles(buf, yy, lut, tiles, cols)


@njit(cache=True, nogil=True)
def horizontal_to_tiles(src: np.ndarray, bounds: np.ndarray, kk: np.ndarray, lut: np.ndarray,
                        tiles: np.ndarray, cols: int, y0: int, y1: int) -> None:
    """Width pass fused with cutting and normalising (rows ``y0:y1``); see vertical_to_tiles."""
    buf = np.empty((_BLOCK_ROWS, bounds.shape[0], 3), np.uint8)
    for yb in range(y0, y1, _BLOCK_ROWS):
        rows = min(_BLOCK_ROWS, y1 - yb)
        horizontal(src[yb:yb + rows], bounds, kk, buf, 0, rows)
        for r in range(rows):
            _row_to_tiles(buf[r].reshape(-1), yb + r, lut, tiles, cols)


@njit(cache=True, nogil=True)
def copy_to_tiles(src: np.ndarray, lut: np.ndarray, tiles: np.ndarray, cols: int,
                  y0: int, y1: int) -> None:
    """No resize needed (the image already has the grid's size): cut and normalise rows."""
    flat = src.reshape(src.shape[0], -1)
    for yy in range(y0, y1):
        _row_to_tiles(flat[yy], yy, lut, tiles, cols)
