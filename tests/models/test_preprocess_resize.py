"""models.pil_resize: threaded strips give exactly Pillow's ``Image.resize`` pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models import pil_resize


def test_order_rule_matches_installed_pillow() -> None:
    assert pil_resize._order_rule_holds()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_random_sizes_bit_exact(mode: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(30):
        w, h = (int(v) for v in rng.integers(1, 1400, 2))
        size = tuple(int(v) for v in rng.integers(1, 2400, 2))
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
        ref = np.asarray(img.resize(size))
        for workers in (1, 2, 3):
            assert np.array_equal(np.asarray(pil_resize.resize(img, size, workers)), ref), (w, h, size)
            assert np.array_equal(pil_resize.resize_array(img, size, workers), ref), (w, h, size)


def test_extreme_shapes() -> None:
    rng = np.random.default_rng(8)
    for (w, h), size in [((20000, 3), (5376, 448)), ((3, 20000), (448, 5376)), ((1, 1), (448, 448)),
                         ((2000, 2000), (448, 448)), ((37, 1000), (448, 448))]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ref = np.asarray(img.resize(size))
        assert np.array_equal(np.asarray(pil_resize.resize(img, size, 4)), ref)
        assert np.array_equal(pil_resize.resize_array(img, size, 4), ref)
