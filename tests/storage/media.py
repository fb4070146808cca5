"""Small real media files, made with Pillow and PyAV (never hand-written magic bytes)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def image_bytes(fmt: str, size: tuple[int, int] = (32, 24)) -> bytes:
    img = Image.new("RGB", size, (200, 40, 90))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def video_bytes(container: str = "mp4", codec: str = "mpeg4", frames: int = 4) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 50) % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
