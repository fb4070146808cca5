"""models.preprocess against the kit (bit-exact) and on awkward inputs (typed errors, never a crash)."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from models import preprocess as P
from models.errors import MediaTooLarge, MediaUnreadable


def _h(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def meta(kit_dir: Path) -> dict:
    return json.loads((kit_dir / "preprocess" / "preprocess.json").read_text(encoding="utf-8"))


def test_decoded_rgb_matches_kit(kit_dir: Path, meta: dict) -> None:
    for spec in meta["images"]:
        img = P.decode_image((kit_dir / "images" / spec["file"]).read_bytes())
        assert img.mode == "RGB" and img.size == (spec["width"], spec["height"])
        assert _h(np.asarray(img)) == spec["decoded_rgb_sha256"], spec["file"]


def test_every_case_bit_exact(kit_dir: Path, meta: dict) -> None:
    tiles_npz = np.load(kit_dir / "preprocess" / "tiles_u8.npz")
    full = load_file(kit_dir / "preprocess" / "pixel_values_f32.safetensors")
    pos = np.array(meta["sample_positions_cyx"])
    for c in meta["cases"]:
        data = (kit_dir / "images" / c["image"]).read_bytes()
        r = P.load_image(data, c["max_num"], min_num=c["min_num"], image_size=c["image_size"],
                         use_thumbnail=c["use_thumbnail"])
        where = (c["image"], c["max_num"])
        assert list(r.grid) == c["grid_cols_rows"], where
        assert (r.num_tiles, r.has_thumbnail) == (c["num_tiles"], c["has_thumbnail"]), where
        assert list(r.size) == c["orig_size_wh"]
        assert list(r.pixel_values.shape) == c["pixel_values_shape"]
        assert r.pixel_values.dtype == np.float32
        assert _h(r.pixel_values) == c["pixel_values_sha256_f32"], where
        assert P.target_ratios(c["min_num"], c["max_num"]) == [tuple(t) for t in c["target_ratios_in_order"]]
        u8, grid = P.tiles_u8(P.decode_image(data), max_num=c["max_num"])
        assert [_h(t) for t in u8] == [t["u8_sha256"] for t in c["per_tile"]], where
        assert list(grid.resized_wh) == c["resized_wh"]
        if c["tiles_u8_stored"]:
            assert np.array_equal(u8, tiles_npz[c["tiles_key"]])
        for t, pt in enumerate(c["per_tile"]):
            samples = r.pixel_values[t][pos[:, 0], pos[:, 1], pos[:, 2]]
            assert np.array_equal(samples, np.array(pt["samples"], np.float32))
            assert float(r.pixel_values[t].min()) == pt["min"] and float(r.pixel_values[t].max()) == pt["max"]
        if "full_f32_key" in c:
            assert np.array_equal(full[c["full_f32_key"]], r.pixel_values)


def test_pil_path_equals_fast_path(kit_dir: Path) -> None:
    img = P.decode_image((kit_dir / "images" / "img05_1920x1080.jpg").read_bytes())
    pil_tiles = P.dynamic_preprocess(img, max_num=12)
    assert len(pil_tiles) == 9
    assert np.array_equal(P.tiles_to_pixel_values(pil_tiles), P.load_image(img).pixel_values)


def test_find_closest_aspect_ratio_table(meta: dict) -> None:
    for row in meta["find_closest_aspect_ratio_table"]:
        g = P.tile_grid(row["width"], row["height"], max_num=row["max_num"])
        assert [g.cols, g.rows] == row["result"], row


def _png(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n garbage", b"\xff\xd8\xff"])
def test_non_image_bytes(data: bytes) -> None:
    with pytest.raises(MediaUnreadable) as e:
        P.decode_image(data)
    assert e.value.code == "media_unreadable"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_truncated(fmt: str) -> None:
    buf = io.BytesIO()
    _noise(300, 200).save(buf, fmt)
    data = buf.getvalue()
    with pytest.raises(MediaUnreadable):
        P.load_image(data[: len(data) // 2])


def _png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def test_decompression_bomb() -> None:
    with pytest.raises(MediaTooLarge) as e:  # > 2x Pillow's limit: DecompressionBombError
        P.decode_image(_png_header_only(100_000, 100_000))
    assert e.value.code == "media_too_large"
    just_over = _png(_noise(100, 100))
    with pytest.raises(MediaTooLarge):  # our explicit limit
        P.decode_image(just_over, max_pixels=9_999)
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 6_000  # 10_000 px: between limit and 2x -> Pillow only warns
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # ... unless warnings are errors
            with pytest.raises(MediaTooLarge):
                P.decode_image(just_over)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(MediaTooLarge):
                P.decode_image(just_over)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    assert P.decode_image(just_over).size == (100, 100)


def test_modes_convert_like_official() -> None:
    rgba = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA")
    for img in (rgba, rgba.convert("LA"), rgba.convert("P"), rgba.convert("L"), rgba.convert("CMYK"),
                rgba.convert("1"), rgba.convert("YCbCr")):
        data = _png(img) if img.mode not in ("CMYK", "YCbCr") else _jpeg(img)
        got = P.decode_image(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own note on palette alpha, reference only
            ref = Image.open(io.BytesIO(data)).convert("RGB")
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(ref)), img.mode
        assert P.load_image(data).pixel_values.shape[1:] == (3, 448, 448)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def test_palette_alpha_bytes_no_warning() -> None:
    rgba = np.random.default_rng(3).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    p = Image.fromarray(rgba, "RGBA").convert("P")
    data = _png(p, transparency=bytes(range(256)))
    ref = Image.open(io.BytesIO(data))
    assert isinstance(ref.info.get("transparency"), bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = P.decode_image(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(np.asarray(got), np.asarray(ref.convert("RGB")))


def test_palette_transparency_ignored() -> None:
    p = Image.new("P", (8, 8))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.info["transparency"] = 0
    got = P.decode_image(_png(p, transparency=0))
    assert np.asarray(got)[0, 0].tolist() == [10, 20, 30]


def test_high_bit_depth_rescaled() -> None:
    a16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    got = np.asarray(P.decode_image(_png(Image.fromarray(a16))))
    assert got.shape == (8, 8, 3) and got[..., 0].max() == round(63000 * 255 / 65535)
    assert np.array_equal(got[..., 0], got[..., 2])
    as_i = Image.fromarray(a16.astype(np.int32))
    assert np.array_equal(np.asarray(P.to_rgb(as_i)), got)
    f = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    assert np.asarray(P.to_rgb(f))[..., 1].max() == 255
    assert P.to_rgb(Image.new("La", (4, 4))).mode == "RGB"


@pytest.mark.parametrize(("w", "h", "grid"), [(1, 1, (1, 1)), (20000, 3, (12, 1)), (3, 20000, (1, 12))])
def test_extreme_sizes(w: int, h: int, grid: tuple[int, int]) -> None:
    r = P.load_image(_png(_noise(w, h)), 12)
    assert r.grid == grid and r.pixel_values.shape[0] == r.num_tiles
    assert np.isfinite(r.pixel_values).all()


@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG")])
def test_exif_orientation_is_separate(mode: str, fmt: str) -> None:
    img = _noise(60, 30).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, fmt, exif=exif)
    decoded = P.decode_image(buf.getvalue())
    assert decoded.size == (60, 30)  # not applied by decoding (official behaviour)
    upright = P.apply_exif_orientation(decoded)  # still readable after the RGB conversion
    assert upright.size == (30, 60) and upright.mode == "RGB"
    plain = _noise(5, 4)
    assert P.apply_exif_orientation(plain).size == (5, 4)
