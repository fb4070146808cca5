"""Grounding: the prompt InternVL2 documents for it, and a forgiving parser of its answers.

InternVL2 writes boxes as ``<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>`` with
coordinates normalised to 0..1000 of the image's width and height (several boxes per ref allowed,
and a ``<box>`` may also appear on its own after a ref). :func:`parse_grounding` turns that into
pixel boxes of the original image. It never raises on model output: malformed pieces are skipped.

Label rule: a box takes the label of the closest ``<ref>`` before it (text in between is
allowed); a box with no ref before it gets ``None``.
Media rule (several images or frames in one prompt): a box belongs to the image named by the
closest ``Image-N`` / ``Image N`` / ``Frame N`` marker before its ref (1-based, as in
:func:`models.prompts.multi_image_question`), if that number is in range; otherwise to
``default_media_index``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypedDict

NORM = 1000.0
GROUNDING_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: "
_SPECIAL = re.compile(r"</?(?:ref|box|quad|img|image|IMG_CONTEXT)>|<\|[^|>]*\|>", re.IGNORECASE)
_TOKEN = re.compile(
    r"<ref>(?P<ref>.*?)</ref>"
    r"|<box>(?P<box>.*?)(?:</box>|(?=<box>|<ref>)|\Z)"
    r"|(?P<media>\b(?:Image|Frame)[-\s]?(?P<num>\d{1,4})\b)",
    re.DOTALL | re.IGNORECASE,
)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_INNER = re.compile(r"[\[(]([^\[\]()]*)[\])]")


class GroundedBox(TypedDict):
    label: str | None
    box: list[float]  # [x1, y1, x2, y2] in pixels of the original image, x1 <= x2, y1 <= y2
    media_index: int


def grounding_prompt(phrase: str) -> str:
    """``Please provide the bounding box coordinate of the region this sentence describes:
    <ref>{phrase}</ref>``. Special tags inside the phrase are removed, so a user phrase cannot
    open an image placeholder or close the ref early."""
    clean = " ".join(_SPECIAL.sub(" ", phrase).split())
    return f"{GROUNDING_PROMPT}<ref>{clean}</ref>"


def box_to_text(box: Sequence[float], size: tuple[int, int]) -> str:
    """A pixel box as the model's ``[[x1, y1, x2, y2]]`` 0..1000 text (for region prompts)."""
    w, h = max(size[0], 1), max(size[1], 1)
    vals = [box[0] / w, box[1] / h, box[2] / w, box[3] / h]
    ints = [int(min(max(v, 0.0), 1.0) * NORM) for v in vals]
    return "[[" + ", ".join(str(v) for v in ints) + "]]"


def _boxes_in(content: str) -> list[list[float]]:
    groups = [_NUMBER.findall(g) for g in _INNER.findall(content)]
    quads = [g for g in groups if len(g) == 4]
    if not quads:  # no bracketed groups of four: read the numbers four at a time
        flat = _NUMBER.findall(content)
        quads = [flat[i : i + 4] for i in range(0, len(flat) - 3, 4)]
    out = []
    for q in quads:
        try:
            vals = [float(v) for v in q]
        except ValueError:
            continue
        if all(v == v and abs(v) != float("inf") for v in vals):  # drop NaN / inf
            out.append(vals)
    return out


def _to_pixels(vals: list[float], size: tuple[int, int]) -> list[float]:
    w, h = float(max(size[0], 0)), float(max(size[1], 0))
    x1, y1, x2, y2 = (min(max(v, 0.0), NORM) for v in vals)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return [round(x1 / NORM * w, 2), round(y1 / NORM * h, 2),
            round(x2 / NORM * w, 2), round(y2 / NORM * h, 2)]


def parse_grounding(text: str, sizes: Sequence[tuple[int, int]] | tuple[int, int], *,
                    default_media_index: int = 0) -> list[GroundedBox]:
    """Boxes in ``text``; ``sizes`` = (width, height) of each image in prompt order (or one
    size). Never raises on odd text; returns ``[]`` when nothing parses."""
    try:
        if len(sizes) == 2 and all(isinstance(v, int | float) for v in sizes):
            size_list = [(int(sizes[0]), int(sizes[1]))]  # type: ignore[arg-type]
        else:
            size_list = [(int(s[0]), int(s[1])) for s in sizes]  # type: ignore[index]
        if not size_list:
            return []
        return _parse(text if isinstance(text, str) else str(text), size_list, default_media_index)
    except Exception:  # model output must never fail a job
        return []


def _parse(text: str, sizes: list[tuple[int, int]], default_media: int) -> list[GroundedBox]:
    default_media = default_media if 0 <= default_media < len(sizes) else 0
    media = default_media
    label: str | None = None
    label_media = media
    out: list[GroundedBox] = []
    for m in _TOKEN.finditer(text):
        if m.group("media") is not None:
            n = int(m.group("num"))
            media = n - 1 if 1 <= n <= len(sizes) else default_media
        elif m.group("ref") is not None:
            label = " ".join(m.group("ref").split())
            label_media = media
        else:
            where = label_media if label is not None else media
            for vals in _boxes_in(m.group("box") or ""):
                out.append(GroundedBox(label=label, box=_to_pixels(vals, sizes[where]), media_index=where))
    return out
