"""models.resample / models.tile_resize: the compiled loops give exactly Pillow's resize bytes,
and the fused tile path exactly the card's ToTensor + Normalize of those bytes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from models import preprocess as P
from models import resample, tile_resize


def _random_cases(seed: int, n: int) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(1, 900, 2))
        if i % 3 == 0:  # the sizes tiling asks for
            size = (448 * int(rng.integers(1, 6)), 448 * int(rng.integers(1, 4)))
        else:
            size = (int(rng.integers(1, 1600)), int(rng.integers(1, 1600)))
        yield rng.integers(0, 256, (h, w, 3), dtype=np.uint8), size


def test_self_check_passes_on_installed_pillow() -> None:
    assert tile_resize.self_check()
    assert tile_resize.available()


def test_random_sizes_bit_exact() -> None:
    for arr, size in _random_cases(11, 60):
        ref = np.asarray(Image.fromarray(arr).resize(size))
        for workers in (1, 2, 5):
            assert np.array_equal(tile_resize.resize_u8(arr, size, workers), ref), (arr.shape, size)


@pytest.mark.parametrize(("wh", "size"), [
    ((20000, 3), (5376, 448)), ((3, 20000), (448, 5376)), ((1, 1), (448, 448)), ((2000, 2000), (448, 448)),
    ((448, 448), (448, 448)), ((448, 300), (448, 448)), ((300, 448), (448, 448)), ((1, 700), (3, 1)),
])
def test_extreme_shapes_bit_exact(wh: tuple[int, int], size: tuple[int, int]) -> None:
    arr = np.random.default_rng(12).integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(arr).resize(size)) if size != wh else arr
    assert np.array_equal(tile_resize.resize_u8(arr, size, 3), ref)


def test_coefficients_sum_to_one_in_fixed_point() -> None:
    for in_size, out_size in [(37, 448), (1920, 448), (448, 448), (1, 5376), (5000, 7)]:
        bounds, kk = resample.coefficients(in_size, out_size)
        assert bounds.shape == (out_size, 2) and kk.shape[0] == out_size
        assert (bounds[:, 0] >= 0).all() and (bounds.sum(axis=1) <= in_size).all()
        # Rounding each weight separately leaves the sum within a few units of 2**22.
        assert np.abs(kk.astype(np.int64).sum(axis=1) - (1 << 22)).max() <= kk.shape[1]


@pytest.mark.parametrize(("wh", "cols", "rows"), [
    ((640, 480), 4, 3), ((37, 1000), 1, 12), ((1000, 37), 12, 1), ((1920, 1080), 4, 2), ((448, 448), 1, 1),
    ((900, 448), 2, 1),
])
def test_fused_tiles_equal_pillow_then_normalise(wh: tuple[int, int], cols: int, rows: int) -> None:
    arr = np.random.default_rng(13).integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8)
    s = 448
    big = np.asarray(Image.fromarray(arr).resize((s * cols, s * rows)))
    u8_tiles = big.reshape(rows, s, cols, s, 3).swapaxes(1, 2).reshape(-1, s, s, 3)
    expected = P.tiles_to_pixel_values(u8_tiles)
    lut = P._lut(P.IMAGENET_MEAN, P.IMAGENET_STD)
    for workers in (1, 2):
        got = np.full((cols * rows, 3, s, s), np.nan, np.float32)
        tile_resize.resize_into_tiles(arr, (s * cols, s * rows), got, cols, lut, workers)
        assert np.array_equal(got, expected)


def test_lut_equals_arithmetic() -> None:
    lut = P._lut(P.IMAGENET_MEAN, P.IMAGENET_STD)
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    ref = P.tiles_to_pixel_values(u8)
    for c in range(3):
        assert np.array_equal(lut[c], ref[0, c].reshape(-1))


def test_pillow_fallback_gives_the_same_pixel_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the compiled path is unavailable (no numba, or a Pillow whose bytes differ), the
    Pillow path is used, with the same result."""
    rng = np.random.default_rng(14)
    img = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    fast = P.load_image(img, 12).pixel_values
    fast_u8, _ = P.tiles_u8(img, max_num=12)
    monkeypatch.setattr(tile_resize, "available", lambda: False)
    assert np.array_equal(P.load_image(img, 12).pixel_values, fast)
    assert np.array_equal(P.tiles_u8(img, max_num=12)[0], fast_u8)
