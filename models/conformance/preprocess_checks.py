"""Preprocessing checks against ``preprocess/preprocess.json`` (+ ``tiles_u8.npz``,
``pixel_values_f32.safetensors`` when present)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models import preprocess as P
from models.conformance import Reporter, expect, expect_eq, load_json, sha256_array, sha256_file

_F32_TOL = 1e-6  # kit tolerance for pixel_values when the u8 formula is not bit-exact


def run_preprocess_checks(kit: Path, rep: Reporter) -> None:
    meta = load_json(kit / "preprocess" / "preprocess.json")
    npz_path = kit / "preprocess" / "tiles_u8.npz"
    tiles_npz = np.load(npz_path) if npz_path.exists() else None
    f32_path = kit / "preprocess" / "pixel_values_f32.safetensors"
    full: dict[str, np.ndarray] = {}
    if f32_path.exists():
        from safetensors.numpy import load_file

        full = load_file(f32_path)

    with rep.check("preprocess/constants"):
        expect_eq(tuple(meta.get("mean", P.IMAGENET_MEAN)), P.IMAGENET_MEAN, "mean")
        expect_eq(tuple(meta.get("std", P.IMAGENET_STD)), P.IMAGENET_STD, "std")

    for spec in meta.get("images", []):
        with rep.check(f"preprocess/decode/{spec['file']}"):
            path = kit / "images" / spec["file"]
            if "sha256" in spec:
                expect_eq(sha256_file(path), spec["sha256"], "file sha256 (kit file changed?)")
            img = P.decode_image(path.read_bytes())
            expect_eq(list(img.size), [spec["width"], spec["height"]], "size")
            if "decoded_rgb_sha256" in spec:
                expect_eq(sha256_array(np.asarray(img)), spec["decoded_rgb_sha256"], "decoded RGB sha256")

    pos = np.array(meta.get("sample_positions_cyx", []), dtype=np.int64).reshape(-1, 3)
    for case in meta.get("cases", []):
        name = f"preprocess/case/{Path(case['image']).stem}/max{case['max_num']}"
        with rep.check(name) as notes:
            _check_case(kit, case, tiles_npz, full, pos, notes)

    table = meta.get("find_closest_aspect_ratio_table")
    if table is not None:
        with rep.check("preprocess/find_closest_aspect_ratio_table") as notes:
            bad = []
            for row in table:
                g = P.tile_grid(row["width"], row["height"], min_num=row.get("min_num", 1),
                                max_num=row["max_num"], image_size=row.get("image_size", P.IMAGE_SIZE))
                if [g.cols, g.rows] != row["result"]:
                    bad.append(f"{row['width']}x{row['height']}@{row['max_num']}: {[g.cols, g.rows]} "
                               f"!= {row['result']}")
            expect(not bad, f"{len(bad)}/{len(table)} rows differ, e.g. {'; '.join(bad[:3])}")
            notes.append(f"{len(table)} rows")


def _check_case(kit: Path, c: dict[str, Any], tiles_npz: Any, full: dict[str, np.ndarray],
                pos: np.ndarray, notes: list[str]) -> None:
    data = (kit / "images" / c["image"]).read_bytes()
    opts = dict(min_num=c.get("min_num", 1), image_size=c.get("image_size", P.IMAGE_SIZE),
                use_thumbnail=c.get("use_thumbnail", True))
    r = P.load_image(data, c["max_num"], **opts)
    expect_eq(P.target_ratios(opts["min_num"], c["max_num"]),
              [tuple(t) for t in c["target_ratios_in_order"]], "target_ratios order")
    if "num_target_ratios" in c:
        expect_eq(len(P.target_ratios(opts["min_num"], c["max_num"])), c["num_target_ratios"],
                  "num_target_ratios")
    expect_eq(list(r.grid), c["grid_cols_rows"], "grid (cols, rows)")
    expect_eq(r.num_tiles, c["num_tiles"], "num_tiles")
    expect_eq(r.has_thumbnail, c["has_thumbnail"], "has_thumbnail")
    expect_eq(list(r.size), c["orig_size_wh"], "orig_size_wh")
    if "blocks" in c:
        expect_eq(r.grid[0] * r.grid[1], c["blocks"], "blocks")
    if "num_image_tokens" in c:
        expect_eq(256 * r.num_tiles, c["num_image_tokens"], "num_image_tokens")
    expect_eq(list(r.pixel_values.shape), c["pixel_values_shape"], "pixel_values shape")
    expect_eq(str(r.pixel_values.dtype), "float32", "pixel_values dtype")

    u8, grid = P.tiles_u8(P.decode_image(data), max_num=c["max_num"], **opts)
    if "resized_wh" in c:
        expect_eq(list(grid.resized_wh), c["resized_wh"], "resized_wh")
    per_tile = c.get("per_tile", [])
    got_hashes = [sha256_array(t) for t in u8]
    want_hashes = [t["u8_sha256"] for t in per_tile]
    bad = [i for i, (g, w) in enumerate(zip(got_hashes, want_hashes, strict=False)) if g != w]
    expect(len(got_hashes) == len(want_hashes) and not bad, f"uint8 tile sha256 differs for tiles {bad}")
    if c.get("tiles_u8_stored") and tiles_npz is not None and c.get("tiles_key") in tiles_npz:
        expect(np.array_equal(u8, tiles_npz[c["tiles_key"]]),
               f"tiles differ from tiles_u8.npz[{c['tiles_key']}]")
        notes.append("tiles_u8.npz equal")

    formula = P.tiles_to_pixel_values(u8)
    if c.get("u8_formula_bit_exact", True):
        expect_eq(sha256_array(r.pixel_values), c["pixel_values_sha256_f32"], "pixel_values sha256")
        expect(np.array_equal(formula, r.pixel_values), "pixel_values differ from the u8 formula")
    else:  # the kit says load_image was not bit-exact with the formula: use its tolerance
        diff = float(np.abs(formula - r.pixel_values).max())
        expect(diff <= _F32_TOL, f"pixel_values differ from the u8 formula by {diff:g}")
        notes.append("sha256 not compared (kit: formula not bit-exact)")
    for t, pt in enumerate(per_tile):
        tile = r.pixel_values[t]
        if len(pos) and "samples" in pt:
            got = tile[pos[:, 0], pos[:, 1], pos[:, 2]]
            expect(np.allclose(got, np.asarray(pt["samples"], np.float32), rtol=0, atol=_F32_TOL),
                   f"tile {t}: samples differ")
        for key, fn in (("min", np.min), ("max", np.max)):
            if key in pt:
                expect(abs(float(fn(tile)) - pt[key]) <= _F32_TOL, f"tile {t}: {key} differs")
        if "sum" in pt:
            s = float(tile.astype(np.float64).sum())
            expect(abs(s - pt["sum"]) <= 1e-6 * max(1.0, abs(pt["sum"])) + 1e-3,
                   f"tile {t}: sum {s} != {pt['sum']}")
    if c.get("full_f32_key"):
        key = c["full_f32_key"]
        expect(key in full, f"{key} missing from pixel_values_f32.safetensors")
        expect(np.array_equal(full[key], r.pixel_values), f"pixel_values differ from stored {key}")
        notes.append(f"equals stored {key}")
