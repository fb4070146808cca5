"""Video checks against ``video/video.json`` and ``video/video_frames_u8.npz``.

Decoded frames: exact equality is expected with decord; with any other decoder the kit allows a
mean absolute difference <= 2 (uint8) per frame provided each frame's block code still reads as
its frame number. ``load_video`` runs: indices and ``num_patches_list`` exact; pixel_values by
sha256 when the frames decoded exactly, otherwise per-frame channel means within a tolerance
derived from the same 2-level budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models import video as V
from models.conformance import Reporter, expect, expect_eq, load_json, sha256_array, sha256_file

FRAME_MAD_LIMIT = 2.0  # uint8 units, kit tolerance for other decoders
_MEAN_TOL = FRAME_MAD_LIMIT / 255 / 0.224 + 1e-3  # that budget through Normalize (std ~0.224)


def run_video_checks(kit: Path, rep: Reporter) -> None:
    meta = load_json(kit / "video" / "video.json")
    table = meta.get("get_index_table")
    if table is not None:
        with rep.check("video/get_index_table") as notes:
            bad = []
            for row in table:
                got = V.get_index(row["bound"], row["fps"], row["max_frame"], row.get("first_idx", 0),
                                  row["num_segments"])
                if got.tolist() != row["indices"] or str(got.dtype) != row.get("dtype", "int64"):
                    bad.append(f"{row['bound']},{row['fps']},{row['max_frame']},{row['num_segments']}: "
                               f"{got.tolist()} ({got.dtype}) != {row['indices']}")
            expect(not bad, f"{len(bad)}/{len(table)} rows differ, e.g. {'; '.join(bad[:2])}")
            notes.append(f"{len(table)} rows")

    npz_path = kit / "video" / "video_frames_u8.npz"
    frames_npz = np.load(npz_path) if npz_path.exists() else None
    for v in meta.get("videos", []):
        exact = [False]
        with rep.check(f"video/{v['file']}/frames") as notes:
            exact[0] = _check_frames(kit, v, frames_npz, notes)
        for run in v.get("runs", []):
            bound = "full" if not run.get("bound") else f"{run['bound'][0]}-{run['bound'][1]}s"
            with rep.check(f"video/{v['file']}/load_video/seg{run['num_segments']}/{bound}") as notes:
                _check_run(kit, v, run, exact[0], notes)


def _check_frames(kit: Path, v: dict[str, Any], frames_npz: Any, notes: list[str]) -> bool:
    path = kit / "video" / v["file"]
    if "sha256" in v:
        expect_eq(sha256_file(path), v["sha256"], "file sha256 (kit file changed?)")
    vr = V.open_video(path.read_bytes())
    if "decord_len" in v:
        expect_eq(len(vr), v["decord_len"], "frame count")
    if "decord_avg_fps" in v:
        expect_eq(float(vr.get_avg_fps()), v["decord_avg_fps"], "average fps")
    got = V.read_frames(vr, list(range(len(vr))))
    if "decoded_frame_codes_all" in v:
        codes = [V.frame_code(f) for f in got]
        expect_eq(codes, v["decoded_frame_codes_all"], "frame block codes")
    key = Path(v["file"]).stem
    if frames_npz is None or key not in frames_npz:
        notes.append("no stored frames")
        return False
    ref = frames_npz[key]
    expect_eq(got.shape, ref.shape, "decoded frames shape")
    if np.array_equal(got, ref):
        notes.append("exact")
        return True
    mad = np.abs(got.astype(np.int16) - ref.astype(np.int16)).reshape(len(ref), -1).mean(1)
    expect(float(mad.max()) <= FRAME_MAD_LIMIT,
           f"frame {int(mad.argmax())} mean abs diff {float(mad.max()):.3f} > {FRAME_MAD_LIMIT}")
    notes.append(f"not bit-exact, max per-frame mean abs diff {float(mad.max()):.3f}")
    return False


def _check_run(kit: Path, v: dict[str, Any], run: dict[str, Any], frames_exact: bool,
               notes: list[str]) -> None:
    r = V.load_video(kit / "video" / v["file"], num_segments=run["num_segments"], bound=run.get("bound"),
                     max_num=run.get("max_num", 1))
    expect_eq(r.frame_indices, run["frame_indices"], "frame indices")
    expect_eq(r.num_patches_list, run["num_patches_list"], "num_patches_list")
    expect_eq(list(r.pixel_values.shape), run["pixel_values_shape"], "pixel_values shape")
    if "decoded_frame_codes" in run:
        vr = V.open_video(kit / "video" / v["file"])
        codes = [V.frame_code(f) for f in V.read_frames(vr, r.frame_indices)]
        expect_eq(codes, run["decoded_frame_codes"], "block codes of the sampled frames")
    if sha256_array(r.pixel_values) == run["pixel_values_sha256_f32"]:
        notes.append("pixel_values sha256 equal")
        return
    expect(not frames_exact, "pixel_values sha256 differs although frames decoded exactly")
    if "per_frame_channel_mean" in run:
        ends = np.cumsum(r.num_patches_list)
        means = np.stack([r.pixel_values[e - k : e].astype(np.float64).mean(axis=(0, 2, 3))
                          for e, k in zip(ends, r.num_patches_list, strict=True)])
        diff = float(np.abs(means - np.asarray(run["per_frame_channel_mean"])).max())
        expect(diff <= _MEAN_TOL, f"per-frame channel means differ by {diff:.4f} > {_MEAN_TOL:.4f}")
        notes.append(f"within tolerance (channel means {diff:.4f})")
    else:
        expect(False, "pixel_values sha256 differs and the kit has no per-frame means to compare")
