"""InternVL2 video input: the model card's frame sampling (``get_index``) and ``load_video``.

Reproduced exactly (QUIRKS 11, checked against ``video/video.json``):

- ``bound`` is ``[start_s, end_s]`` or falsy (then ``-100000, 100000``);
  ``start_idx = max(first_idx, round(start*fps))``, ``end_idx = min(round(end*fps), max_frame)``
  with Python's ``round`` (half to even); ``seg = (end_idx - start_idx) / num_segments``;
  index ``k`` = ``int(start_idx + seg/2 + np.round(seg*k))`` (``np.round`` half to even, ``int``
  truncates toward zero). Duplicates when there are more segments than frames, decreasing
  indices when ``start > end``; no clamping. Result: ``int64`` numpy array.
- ``max_frame = len(frames) - 1``, ``fps = get_avg_fps()`` (decord).
- Each sampled frame goes through the image path (``dynamic_preprocess`` with ``max_num``, 1 by
  default: one 448x448 tile, no thumbnail) and ``num_patches_list`` holds the tiles per frame.

Unlike the model card, only the sampled frames are decoded (one sorted, de-duplicated
``get_batch``; decord seeks accurately, so the pixels are the same as indexing frame by frame).
The prompt for a video is :func:`models.prompts.video_question`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models import pil_resize
from models.errors import InvalidInput, MediaTooLarge, MediaUnreadable
from models.preprocess import IMAGE_SIZE, PreprocessedImage, load_image

VideoSource = bytes | bytearray | memoryview | str | os.PathLike[str]


def get_index(bound: tuple[float, float] | list[float] | None, fps: float, max_frame: int,
              first_idx: int = 0, num_segments: int = 32) -> np.ndarray:
    """The model card's ``get_index`` (see module docstring); ``int64`` frame indices."""
    if num_segments < 1:
        raise InvalidInput(f"num_segments must be >= 1, got {num_segments}")
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return np.array(
        [int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)],
        dtype=np.int64,
    )


@dataclass(frozen=True)
class PreprocessedVideo:
    """``pixel_values`` float32 ``[sum(num_patches_list), 3, S, S]``; ``frame_indices`` as sampled
    (duplicates kept); ``fps`` = decord's average fps; ``num_frames`` = ``len(vr)``;
    ``size`` = (width, height) of the frames."""

    pixel_values: np.ndarray
    num_patches_list: list[int]
    frame_indices: list[int]
    fps: float
    num_frames: int
    size: tuple[int, int]


def open_video(source: VideoSource) -> Any:
    """A decord ``VideoReader`` (CPU, one thread, as the model card) on bytes or a path;
    :class:`MediaUnreadable` for anything decord cannot open (including zero-frame videos)."""
    import decord  # the decord2 package; imported lazily so preprocessing alone does not need it

    try:
        if isinstance(source, bytes | bytearray | memoryview):
            if not source:
                raise MediaUnreadable("empty video data")
            return decord.VideoReader(io.BytesIO(bytes(source)), ctx=decord.cpu(0), num_threads=1)
        path = Path(source)
        if not path.is_file():
            raise MediaUnreadable(f"no video file at {path}")
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except MediaUnreadable:
        raise
    except MemoryError:
        raise MediaTooLarge("not enough memory to open the video") from None
    except Exception as e:  # decord raises DECORDError (a RuntimeError) for anything unreadable
        raise MediaUnreadable(f"cannot decode video: {type(e).__name__}: {str(e)[:200]}") from None


def read_frames(vr: Any, indices: np.ndarray | list[int]) -> np.ndarray:
    """uint8 ``[len(indices), H, W, 3]`` RGB frames, decoding each distinct index once."""
    idx = np.asarray(indices, dtype=np.int64)
    n = len(vr)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise InvalidInput(f"frame indices {idx.min()}..{idx.max()} outside a video of {n} frames")
    unique, inverse = np.unique(idx, return_inverse=True)
    try:
        batch = vr.get_batch(unique.tolist()).asnumpy()
    except MemoryError:
        raise MediaTooLarge("not enough memory to decode the frames") from None
    except Exception as e:
        raise MediaUnreadable(f"cannot decode video frames: {type(e).__name__}: {str(e)[:200]}") from None
    return batch[inverse.reshape(-1)]


def load_video(source: VideoSource, *, num_segments: int = 8, bound: tuple[float, float] | None = None,
               max_num: int = 1, image_size: int = IMAGE_SIZE, max_frame_pixels: int | None = None,
               workers: int | None = None) -> PreprocessedVideo:
    """The model card's ``load_video`` on bytes or a path.

    Errors: unreadable/corrupt/non-video data or no frames -> :class:`MediaUnreadable`; frames
    larger than ``max_frame_pixels`` (default Pillow's ``MAX_IMAGE_PIXELS``) ->
    :class:`MediaTooLarge`; a ``bound`` that selects frames outside the video or bad parameters ->
    :class:`InvalidInput`."""
    vr = open_video(source)
    num_frames = len(vr)
    if num_frames < 1:
        raise MediaUnreadable("video has no frames")
    fps = float(vr.get_avg_fps())
    if not np.isfinite(fps) or fps <= 0:
        raise MediaUnreadable(f"video reports an unusable frame rate {fps}")
    indices = get_index(bound, fps, num_frames - 1, first_idx=0, num_segments=num_segments)
    frames = read_frames(vr, indices)
    height, width = int(frames.shape[1]), int(frames.shape[2])
    limit = Image.MAX_IMAGE_PIXELS if max_frame_pixels is None else max_frame_pixels
    if limit is not None and width * height > limit:
        raise MediaTooLarge(f"video frames of {width}x{height} exceed {limit} pixels")
    # frames in parallel on the resize pool, each frame's own resize single-threaded
    def one(frame: np.ndarray) -> PreprocessedImage:
        return load_image(Image.fromarray(frame), max_num, image_size=image_size, workers=1)

    parts = pil_resize.map_parallel(one, list(frames), workers)
    return PreprocessedVideo(
        pixel_values=np.concatenate([p.pixel_values for p in parts]),
        num_patches_list=[p.num_tiles for p in parts],
        frame_indices=[int(i) for i in indices],
        fps=fps,
        num_frames=num_frames,
        size=(width, height),
    )


def frame_code(frame: np.ndarray, bits: int = 8) -> int:
    """The conformance videos' frame number, read from the 8 blocks at y 8..23, x 8+20*bit:
    mean of each block's 8x8 centre (all channels) thresholded at 127, bit 0 first."""
    code = 0
    for bit in range(bits):
        centre = frame[12:20, 12 + 20 * bit : 20 + 20 * bit]
        if float(np.mean(centre)) > 127:
            code |= 1 << bit
    return code
