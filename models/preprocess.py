"""InternVL2 image preprocessing: the model card's dynamic tiling, reproduced bit for bit.

Official behaviour reproduced (QUIRKS 8-10, checked against ``preprocess/preprocess.json``):

- Candidate grids ``(cols, rows)`` with ``min_num <= cols*rows <= max_num``, iterated in the
  official order: a Python ``set`` sorted by area (ties keep the set's iteration order, which
  CPython derives from the tuple hashes, so we build the same set the same way).
- :func:`find_closest_aspect_ratio`: smallest ``|W/H - cols/rows|``; on an exact tie the later
  candidate wins only when ``W*H > 0.5 * image_size² * cols * rows``.
- The image is *stretched* to ``(image_size·cols, image_size·rows)`` with Pillow's default
  resample (bicubic for RGB), cut row-major into tiles; a thumbnail (the original image resized
  to ``image_size²``) is appended last, only when ``cols*rows > 1``.
- ``pixel_values = ((u8 / 255) - mean) / std`` in float32, CHW — the same float32 operations in
  the same order as torchvision's ToTensor + Normalize, hence equal bit for bit (IEEE division
  and subtraction are correctly rounded in numpy as in torch).

Speed: the resize is Pillow's own arithmetic on compiled, vectorised loops
(:mod:`models.resample`, several times faster than Pillow's scalar C, the same bytes — checked
against the installed Pillow at first use, Pillow itself otherwise), cut into row strips that run
in parallel; its last pass writes the normalised float32 tiles directly through a per-byte lookup
table (no uint8 image, no crops, no per-tile tensors). The thumbnail overlaps it on the pool.

Decoding (:func:`decode_image`, in :mod:`models.decode`, re-exported here) is the official
``Image.open(f).convert('RGB')`` with typed errors; EXIF orientation is *not* applied (the
official code does not, QUIRKS 10) — the service calls :func:`apply_exif_orientation` itself,
outside the engine, when it wants upright images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from models import pil_resize, tile_resize
from models.decode import apply_exif_orientation, decode_image, to_rgb
from models.errors import InvalidInput

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreprocessedImage",
    "TileGrid",
    "apply_exif_orientation",
    "decode_image",
    "dynamic_preprocess",
    "find_closest_aspect_ratio",
    "load_image",
    "target_ratios",
    "tile_grid",
    "tiles_to_pixel_values",
    "tiles_u8",
    "to_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 448


@lru_cache(maxsize=64)
def _target_ratios(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    # Built exactly like the model card (a set of tuples, then a stable sort by area) so that
    # equal-area candidates come out in the same order as the official code.
    candidates = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return tuple(sorted(candidates, key=lambda r: r[0] * r[1]))


def target_ratios(min_num: int = 1, max_num: int = 12) -> list[tuple[int, int]]:
    """Candidate grids ``(cols, rows)`` in the official iteration order."""
    return list(_target_ratios(min_num, max_num))


def find_closest_aspect_ratio(aspect_ratio: float, ratios: Sequence[tuple[int, int]], width: int,
                              height: int, image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """The model card's choice of grid, tie-break included (see module docstring)."""
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for cols, rows in ratios:
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


@dataclass(frozen=True)
class TileGrid:
    cols: int
    rows: int
    image_size: int = IMAGE_SIZE
    use_thumbnail: bool = True

    @property
    def blocks(self) -> int:
        return self.cols * self.rows

    @property
    def has_thumbnail(self) -> bool:
        return self.use_thumbnail and self.blocks != 1

    @property
    def num_tiles(self) -> int:
        return self.blocks + int(self.has_thumbnail)

    @property
    def resized_wh(self) -> tuple[int, int]:
        return self.image_size * self.cols, self.image_size * self.rows


def tile_grid(width: int, height: int, *, min_num: int = 1, max_num: int = 12,
              image_size: int = IMAGE_SIZE, use_thumbnail: bool = True) -> TileGrid:
    """The grid ``dynamic_preprocess`` picks for a ``width x height`` image."""
    if width < 1 or height < 1:
        raise InvalidInput(f"image has no pixels ({width}x{height})")
    if not 1 <= min_num <= max_num:
        raise InvalidInput(f"need 1 <= min_num <= max_num, got {min_num}, {max_num}")
    cols, rows = find_closest_aspect_ratio(width / height, _target_ratios(min_num, max_num),
                                           width, height, image_size)
    return TileGrid(cols, rows, image_size, use_thumbnail)


def _resize(img: Image.Image, size: tuple[int, int], workers: int | None = None) -> Image.Image:
    # Image.resize's default resample (bicubic for RGB), as the model card calls it; computed in
    # parallel strips by models.pil_resize, which returns exactly Pillow's pixels.
    return pil_resize.resize(img, size, workers)


def dynamic_preprocess(img: Image.Image, *, min_num: int = 1, max_num: int = 12,
                       image_size: int = IMAGE_SIZE, use_thumbnail: bool = True) -> list[Image.Image]:
    """The model card's ``dynamic_preprocess``: PIL tiles, row-major, thumbnail last."""
    grid = tile_grid(img.width, img.height, min_num=min_num, max_num=max_num,
                     image_size=image_size, use_thumbnail=use_thumbnail)
    resized = _resize(img, grid.resized_wh)
    tiles = [
        resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
        for r in range(grid.rows)
        for c in range(grid.cols)
    ]
    if grid.has_thumbnail:
        tiles.append(_resize(img, (image_size, image_size)))
    return tiles


# --- tiling -------------------------------------------------------------------------------------
def _workers(workers: int | None) -> int:
    return pil_resize.default_workers() if workers is None else max(1, workers)


def _rgb_array_resized(img: Image.Image, size: tuple[int, int], workers: int | None) -> np.ndarray:
    """``np.asarray(img.resize(size))`` for an RGB image: on the compiled loops when they are
    available (:mod:`models.tile_resize`), else Pillow's own resize in threaded strips."""
    if img.mode != "RGB":
        raise InvalidInput(f"expected an 8-bit RGB image, got mode {img.mode}")
    if tile_resize.available():
        return tile_resize.resize_u8(_rgb_array(img), size, _workers(workers))
    return pil_resize.resize_array(img, size, workers)


def _rgb_array(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInput(f"expected an 8-bit RGB image, got mode {img.mode}")
    return arr


def tiles_u8(img: Image.Image, *, min_num: int = 1, max_num: int = 12, image_size: int = IMAGE_SIZE,
             use_thumbnail: bool = True, workers: int | None = None) -> tuple[np.ndarray, TileGrid]:
    """uint8 tiles ``[num_tiles, S, S, 3]`` (HWC, RGB) in official order, and the grid.
    Same pixels as :func:`dynamic_preprocess`, without PIL crops."""
    img = to_rgb(img)
    grid = tile_grid(img.width, img.height, min_num=min_num, max_num=max_num,
                     image_size=image_size, use_thumbnail=use_thumbnail)
    s = image_size
    big = _rgb_array_resized(img, grid.resized_wh, workers)
    out = np.empty((grid.num_tiles, s, s, 3), np.uint8)
    out[: grid.blocks] = big.reshape(grid.rows, s, grid.cols, s, 3).swapaxes(1, 2).reshape(-1, s, s, 3)
    if grid.has_thumbnail:
        out[grid.blocks] = _rgb_array_resized(img, (s, s), workers)
    return out, grid


@lru_cache(maxsize=8)
def _constants(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(mean, np.float32).reshape(3, 1, 1), np.asarray(std, np.float32).reshape(3, 1, 1)


@lru_cache(maxsize=8)
def _lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 [3, 256]: the normalised value of every byte per channel, computed with exactly
    the operations of :func:`_normalise_into` (so a lookup equals the arithmetic bit for bit)."""
    out = np.empty((1, 3, 1, 256), np.float32)
    _normalise_into(out, np.arange(256, dtype=np.uint8).reshape(1, 1, 256, 1).repeat(3, axis=3), mean, std)
    return out.reshape(3, 256)


def _normalise_into(dst: np.ndarray, hwc: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> None:
    """``dst[..., c, :, :] = ((hwc[..., c] / 255) - mean[c]) / std[c]`` in float32 for uint8 HWC
    tiles ``hwc [..., S, S, 3]`` — the same float32 operations in the same order as ToTensor
    (``.float().div(255)``) + Normalize (``.sub_(mean).div_(std)``), so bit-identical to them.
    One tile at a time, so that the passes over it stay in cache."""
    m, sd = _constants(tuple(mean), tuple(std))
    for idx in np.ndindex(*dst.shape[:-3]):
        o = dst[idx]
        np.copyto(o, np.ascontiguousarray(np.moveaxis(hwc[idx], -1, 0)))  # CHW, uint8 -> float32
        np.divide(o, np.float32(255), out=o)
        np.subtract(o, m, out=o)
        np.divide(o, sd, out=o)


def tiles_to_pixel_values(tiles: Sequence[Image.Image] | np.ndarray, *,
                          mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """float32 ``[N, 3, H, W]`` from PIL tiles or a uint8 ``[N, H, W, 3]`` array (build_transform)."""
    arr = np.stack([_rgb_array(to_rgb(t)) for t in tiles]) if not isinstance(tiles, np.ndarray) else tiles
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
        raise InvalidInput(f"expected uint8 [N, H, W, 3] tiles, got {arr.dtype} {arr.shape}")
    out = np.empty((arr.shape[0], 3, arr.shape[1], arr.shape[2]), np.float32)
    _normalise_into(out, arr, mean, std)
    return out


@dataclass(frozen=True)
class PreprocessedImage:
    """``pixel_values`` float32 ``[num_tiles, 3, S, S]``; ``grid`` = (cols, rows); ``size`` =
    (width, height) of the image that was tiled (what grounding boxes are relative to)."""

    pixel_values: np.ndarray
    grid: tuple[int, int]
    num_tiles: int
    size: tuple[int, int]
    has_thumbnail: bool


def _pixel_values_compiled(img: Image.Image, grid: TileGrid, workers: int) -> np.ndarray:
    # models.tile_resize: Pillow's resize on compiled loops whose last pass writes normalised
    # tiles directly; the thumbnail (independent, small) overlaps on the pool.
    s, src, lut = grid.image_size, _rgb_array(img), _lut(IMAGENET_MEAN, IMAGENET_STD)
    out = np.empty((grid.num_tiles, 3, s, s), np.float32)
    wait_thumbnail = None
    if grid.has_thumbnail:
        thumb = out[grid.blocks:]
        wait_thumbnail = pil_resize.in_background(
            lambda: tile_resize.resize_into_tiles(src, (s, s), thumb, 1, lut, 1), workers)
    tile_resize.resize_into_tiles(src, grid.resized_wh, out[: grid.blocks], grid.cols, lut, workers)
    if wait_thumbnail is not None:
        wait_thumbnail()
    return out


def _pixel_values(img: Image.Image, grid: TileGrid, workers: int | None) -> np.ndarray:
    """float32 ``[num_tiles, 3, S, S]`` for an RGB image and its grid (the card's transform)."""
    n = _workers(workers)
    if tile_resize.available():
        return _pixel_values_compiled(img, grid, n)
    s = grid.image_size
    out = np.empty((grid.num_tiles, 3, s, s), np.float32)
    wait_thumbnail = None
    if grid.has_thumbnail:  # small, independent of the big resize: overlap it on the pool
        def thumbnail() -> None:
            _normalise_into(out[grid.blocks], _rgb_array(_resize(img, (s, s), 1)))

        wait_thumbnail = pil_resize.in_background(thumbnail, n)
    big = _rgb_array_resized(img, grid.resized_wh, n)
    # [rows, S, cols, S, 3] -> [rows, cols, S, S, 3]: tile views in row-major order, no copy.
    grid_view = big.reshape(grid.rows, s, grid.cols, s, 3).swapaxes(1, 2)
    step = -(-grid.blocks // n)

    def normalise(first: int) -> None:  # a run of tiles; numpy releases the GIL in these loops
        for t in range(first, min(first + step, grid.blocks)):
            _normalise_into(out[t], grid_view[t // grid.cols, t % grid.cols])

    pil_resize.map_parallel(normalise, range(0, grid.blocks, step), n)
    if wait_thumbnail is not None:
        wait_thumbnail()
    return out


def load_image(data_or_img: bytes | bytearray | memoryview | Image.Image, max_num: int = 12, *,
               min_num: int = 1, image_size: int = IMAGE_SIZE, use_thumbnail: bool = True,
               workers: int | None = None) -> PreprocessedImage:
    """The model card's ``load_image``: decode (``.convert('RGB')``, no EXIF rotation), tile,
    normalise. Bytes go through :func:`decode_image` (typed errors); a PIL image is converted
    with :func:`to_rgb`. ``workers``: threads for the resize (None = up to 4, 1 = none)."""
    if isinstance(data_or_img, bytes | bytearray | memoryview):
        img = decode_image(data_or_img)
    else:
        img = to_rgb(data_or_img)
    grid = tile_grid(img.width, img.height, min_num=min_num, max_num=max_num,
                     image_size=image_size, use_thumbnail=use_thumbnail)
    out = _pixel_values(img, grid, workers)
    return PreprocessedImage(out, (grid.cols, grid.rows), grid.num_tiles, img.size, grid.has_thumbnail)
