"""models.video against the kit (get_index table, load_video runs, decoded frames) and bad input."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest

from models import video as V
from models.errors import InvalidInput, MediaUnreadable


def _h(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def meta(kit_dir: Path) -> dict:
    return json.loads((kit_dir / "video" / "video.json").read_text(encoding="utf-8"))


def test_get_index_table(meta: dict) -> None:
    for row in meta["get_index_table"]:
        got = V.get_index(row["bound"], row["fps"], row["max_frame"], row["first_idx"], row["num_segments"])
        assert got.tolist() == row["indices"], row
        assert str(got.dtype) == row["dtype"]


def test_load_video_runs(kit_dir: Path, meta: dict) -> None:
    for v in meta["videos"]:
        path = kit_dir / "video" / v["file"]
        for i, run in enumerate(v["runs"]):
            src = path.read_bytes() if i % 2 == 0 else path  # bytes and paths both work
            r = V.load_video(src, num_segments=run["num_segments"], bound=run["bound"],
                             max_num=run["max_num"])
            assert r.frame_indices == run["frame_indices"]
            assert r.num_patches_list == run["num_patches_list"]
            assert list(r.pixel_values.shape) == run["pixel_values_shape"]
            assert _h(r.pixel_values) == run["pixel_values_sha256_f32"]
            assert (r.num_frames, r.fps) == (v["decord_len"], v["decord_avg_fps"])
            assert r.size == (v["width"], v["height"])
            means = r.pixel_values.reshape(len(r.frame_indices), -1).astype(np.float64).mean(1)
            np.testing.assert_allclose(means, run["per_frame_mean"], rtol=0, atol=1e-6)


def test_decoded_frames_and_codes(kit_dir: Path, meta: dict) -> None:
    frames = np.load(kit_dir / "video" / "video_frames_u8.npz")
    for v in meta["videos"]:
        ref = frames[Path(v["file"]).stem]
        vr = V.open_video((kit_dir / "video" / v["file"]).read_bytes())
        got = V.read_frames(vr, list(range(len(vr))))
        assert got.shape == ref.shape
        assert [V.frame_code(f) for f in got] == v["decoded_frame_codes_all"]
        assert np.array_equal(got, ref)  # decord2 decodes exactly like decord 0.6.0 here
        # out of order and duplicated indices decode like indexing one by one
        sel = [9, 3, 3, 0, len(vr) - 1]
        assert np.array_equal(V.read_frames(vr, sel), ref[sel])


def _mp4(n_frames: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 40) % 256, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return buf.getvalue()


def test_short_video_duplicates() -> None:
    r = V.load_video(_mp4(3), num_segments=8)
    assert r.num_frames == 3 and r.frame_indices == V.get_index(None, r.fps, 2, 0, 8).tolist()
    assert len(r.num_patches_list) == 8 and r.pixel_values.shape == (8, 3, 448, 448)


def test_zero_frame_video(tmp_path: Path) -> None:
    path = tmp_path / "zero.mp4"
    c = av.open(str(path), "w", format="mp4")
    s = c.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()  # header with a video stream, then no frames at all
    c.close()
    with pytest.raises(MediaUnreadable):
        V.load_video(path.read_bytes())
    with pytest.raises(MediaUnreadable):
        V.load_video(path)


@pytest.mark.parametrize("data", [b"", b"definitely not a video" * 50, b"\x00" * 4096])
def test_non_video(data: bytes) -> None:
    with pytest.raises(MediaUnreadable):
        V.load_video(data)


def test_corrupt_and_truncated(kit_dir: Path) -> None:
    data = (kit_dir / "video" / "vid01_320x240_25fps_75f.mp4").read_bytes()
    with pytest.raises(MediaUnreadable):
        V.load_video(data[:1500])
    broken = bytearray(data)
    broken[len(data) // 2 : len(data) // 2 + 3000] = b"\x00" * 3000
    with pytest.raises(MediaUnreadable):
        V.load_video(bytes(broken))
    with pytest.raises(MediaUnreadable):
        V.load_video(kit_dir / "video" / "missing.mp4")


def test_bad_parameters(kit_dir: Path) -> None:
    path = kit_dir / "video" / "vid01_320x240_25fps_75f.mp4"
    with pytest.raises(InvalidInput):
        V.load_video(path, bound=(10.0, 20.0))  # 3 s video: frames 250.. do not exist
    with pytest.raises(InvalidInput):
        V.load_video(path, num_segments=0)
