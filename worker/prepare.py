"""Turn a job's media items into model inputs: fetch, decode, tile or sample frames, and build the
first round's question. Runs on a task thread (CPU and network work, overlapping the engine).

**EXIF orientation is applied here, not in the engine.** The official InternVL2 preprocessing
(``Image.open(f).convert('RGB')``, kit QUIRKS 10) ignores the EXIF Orientation tag, and
``models.preprocess`` reproduces that bit for bit so the engine matches the official code. A
service, though, should show the model the picture the way every viewer shows it: a phone photo
stored sideways with ``Orientation=6`` is rotated upright here, before tiling. Grounding boxes are
therefore in pixel coordinates of that upright image (its ``size``). Images without the tag —
all of the conformance kit's — are untouched, so the conformance answers are unaffected.

Question layout for the first round (later rounds are the bare prompt plus the history, exactly
as ``chat()`` is called again with ``history``):

- no media: the prompt (a pure text conversation);
- a prompt that already holds ``<image>`` placeholders: used as written (the caller placed them);
- one image: the prompt, and ``chat()``'s automatic ``<image>\\n`` prefix applies;
- several images, ``separate``: ``Image-1: <image>\\nImage-2: <image>\\n…`` + prompt, one tile
  count per image; ``combined``: ``<image>\\n`` + prompt with all images' tiles as one image;
- one video: ``Frame1: <image>\\n…FrameN: <image>\\n`` + prompt (one entry per frame);
- images and videos together, or several videos: the same pieces in media order (``combined``
  puts the one image block first), each video's frames introduced by ``Video-k:\\n`` when there
  is more than one video.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models import prompts
from models.preprocess import apply_exif_orientation, decode_image, load_image
from models.video import load_video
from storage.config import StorageConfig
from storage.fetch import open_media


@dataclass
class PreparedItem:
    """One media item ready for the engine: ``pixel_values`` float32 ``[tiles, 3, S, S]``,
    ``num_patches`` (one entry for an image, one per frame for a video) and the (width, height)
    of the picture that was tiled (upright image, or video frame)."""

    kind: str
    pixel_values: np.ndarray
    num_patches: list[int]
    size: tuple[int, int]
    frames: int = 0
    fetch_seconds: float = 0.0

    @property
    def tiles(self) -> int:
        return int(sum(self.num_patches))


@dataclass
class PreparedInput:
    """The first round's question and the visual input for every round."""

    question: str
    pixel_values: np.ndarray | None
    num_patches_list: list[int] | None
    items: list[PreparedItem] = field(default_factory=list)

    @property
    def tiles(self) -> int:
        return sum(i.tiles for i in self.items)

    @property
    def frames(self) -> int:
        return sum(i.frames for i in self.items)


def prepare_item(item: dict[str, Any], storage: StorageConfig, *,
                 resize_workers: int | None = None) -> PreparedItem:
    """Fetch and preprocess one request media item (typed storage/model errors propagate)."""
    kind = item["type"]
    t0 = time.monotonic()
    rng = item.get("byte_range")  # a WebDataset tar member: only these bytes of the shard
    byte_range = (int(rng[0]), int(rng[1])) if rng else None
    with open_media(item["url"], storage, kind=kind, byte_range=byte_range) as blob:
        fetched = time.monotonic() - t0
        if kind == "image":
            img = apply_exif_orientation(decode_image(blob.read()))
            pre = load_image(img, int(item.get("max_tiles") or 12), workers=resize_workers)
            return PreparedItem("image", pre.pixel_values, [pre.num_tiles], pre.size, 0, fetched)
        with blob.as_path() as path:
            vid = load_video(path, num_segments=int(item.get("num_frames") or 8), bound=video_bound(item),
                             max_num=int(item.get("max_tiles") or 1), workers=resize_workers)
        return PreparedItem("video", vid.pixel_values, list(vid.num_patches_list), vid.size,
                            len(vid.frame_indices), fetched)


def video_bound(item: dict[str, Any]) -> tuple[float, float] | None:
    """The model card's ``bound``: None (whole video, exactly its default sampling) unless the
    request narrows the window; an open end reaches past any real video."""
    start = float(item.get("start") or 0.0)
    end = item.get("end")
    if start <= 0.0 and end is None:
        return None
    return (start, float(end) if end is not None else 100000.0)


def prepare_items(media: Sequence[dict[str, Any]], storage: StorageConfig, *,
                  check: Callable[[], None] | None = None,
                  resize_workers: int | None = None) -> list[PreparedItem]:
    """Fetch and preprocess every item in order; ``check()`` runs before each item and raises
    to stop early (cancel, time limit)."""
    items: list[PreparedItem] = []
    for item in media:
        if check is not None:
            check()
        items.append(prepare_item(item, storage, resize_workers=resize_workers))
    return items


def prepare_media(media: Sequence[dict[str, Any]], prompt: str, image_mode: str, storage: StorageConfig,
                  *, check: Callable[[], None] | None = None,
                  resize_workers: int | None = None) -> PreparedInput:
    """:func:`prepare_items`, then the first question's :func:`layout`."""
    return layout(prepare_items(media, storage, check=check, resize_workers=resize_workers), prompt,
                  image_mode)


def layout(items: list[PreparedItem], prompt: str, image_mode: str) -> PreparedInput:
    """The first question and the tiles in placeholder order (see the module docstring)."""
    if not items:
        return PreparedInput(prompt, None, None, items)
    images = [i for i in items if i.kind == "image"]
    videos = [i for i in items if i.kind == "video"]
    combined = image_mode == "combined" and len(images) > 1
    # Placeholder order = pixel order. Combined mode gathers the image tiles into one block first.
    ordered = images + videos if combined else items
    pixels = (np.concatenate([i.pixel_values for i in ordered]) if len(ordered) > 1
              else ordered[0].pixel_values)
    if combined:
        patches = [sum(i.tiles for i in images)] + [n for v in videos for n in v.num_patches]
    else:
        patches = [n for i in items for n in i.num_patches]
    if prompts.IMAGE_PLACEHOLDER in prompt:
        return PreparedInput(prompt, pixels, patches, items)
    if not videos:
        if len(images) == 1:
            question = prompt  # chat() adds "<image>\n" itself on the first round
        else:
            question = prompts.multi_image_question(len(images), prompt, combined=combined)
        return PreparedInput(question, pixels, patches, items)
    if not images and len(videos) == 1:
        return PreparedInput(prompts.video_question(videos[0].frames, prompt), pixels, patches, items)
    parts: list[str] = []
    if combined:
        parts.append(prompts.IMAGE_PLACEHOLDER + "\n")
    image_no = video_no = 0
    for it in ordered:
        if it.kind == "image":
            if not combined:
                image_no += 1
                parts.append(f"Image-{image_no}: {prompts.IMAGE_PLACEHOLDER}\n")
            continue
        video_no += 1
        label = f"Video-{video_no}:\n" if len(videos) > 1 else ""
        frames = "".join(f"Frame{j}: {prompts.IMAGE_PLACEHOLDER}\n" for j in range(1, it.frames + 1))
        parts.append(label + frames)
    return PreparedInput("".join(parts) + prompt, pixels, patches, items)
