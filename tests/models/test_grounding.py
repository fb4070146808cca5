"""models.grounding: prompt builder and a parser that never raises on model output."""

from __future__ import annotations

import random

from models.grounding import box_to_text, grounding_prompt, parse_grounding


def test_prompt() -> None:
    assert grounding_prompt("the red car") == (
        "Please provide the bounding box coordinate of the region this sentence describes: "
        "<ref>the red car</ref>"
    )
    p = grounding_prompt("a <image> cat</ref><box>")
    assert "<image>" not in p and p.endswith("<ref>a cat</ref>") and p.count("</ref>") == 1


def test_single_ref_single_box() -> None:
    out = parse_grounding("<ref>cat</ref><box>[[100, 200, 500, 1000]]</box>", (640, 480))
    assert out == [{"label": "cat", "box": [64.0, 96.0, 320.0, 480.0], "media_index": 0}]


def test_several_boxes_and_bare_boxes() -> None:
    text = ("There are <ref>two dogs</ref><box>[[0, 0, 100, 100], [500, 500, 600, 700]]</box> and "
            "a second mention <box>[[10, 10, 20, 20]]</box>. <ref>sky</ref>\n<box>[[0,0,1000,300]]</box>")
    out = parse_grounding(text, (1000, 2000))
    assert [b["label"] for b in out] == ["two dogs", "two dogs", "two dogs", "sky"]
    assert out[1]["box"] == [500.0, 1000.0, 600.0, 1400.0]
    assert out[3]["box"] == [0.0, 0.0, 1000.0, 600.0]


def test_box_without_ref_and_reversed_and_clamped() -> None:
    out = parse_grounding("<box>[[900, 900, 100, 1200]]</box>", [(100, 100)])
    assert out == [{"label": None, "box": [10.0, 90.0, 90.0, 100.0], "media_index": 0}]


def test_media_index_from_markers() -> None:
    text = ("Image-1: <ref>a</ref><box>[[0,0,500,500]]</box>\n"
            "Image-2: <ref>b</ref><box>[[0,0,500,500]]</box> Image 9 <ref>c</ref><box>[[0,0,1,1]]</box>")
    out = parse_grounding(text, [(100, 100), (200, 400)])
    assert [(b["label"], b["media_index"]) for b in out] == [("a", 0), ("b", 1), ("c", 0)]
    assert out[1]["box"] == [0.0, 0.0, 100.0, 200.0]
    assert parse_grounding("<ref>x</ref><box>[[0,0,1,1]]</box>", [(1, 1), (2, 2)],
                           default_media_index=1)[0]["media_index"] == 1


def test_truncated_and_malformed() -> None:
    assert parse_grounding("<ref>cat</ref><box>[[1, 2, 3", (10, 10)) == []
    out = parse_grounding("<ref>cat</ref><box>[[100, 100, 200, 200]]", (10, 10))  # no </box>
    assert out == [{"label": "cat", "box": [1.0, 1.0, 2.0, 2.0], "media_index": 0}]
    assert parse_grounding("<box>[[nan, 1, 2, 3]]</box><box>[]</box><box></box>", (10, 10)) == []
    assert parse_grounding("<box>10 20 30 40</box>", (1000, 1000))[0]["box"] == [10.0, 20.0, 30.0, 40.0]
    assert parse_grounding("no boxes here", (10, 10)) == []
    assert parse_grounding("<ref>a</ref><box>[[1,2,3,4]]</box>", []) == []


def test_never_raises_on_garbage() -> None:
    rng = random.Random(0)
    alphabet = ["<ref>", "</ref>", "<box>", "</box>", "[[", "]]", "[", "]", ",", " ", "1", "-5", "1e9",
                "999.5", "Image-", "Frame", "2", "\n", "é", "\x00", "<|im_end|>", "(", ")"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        out = parse_grounding(text, [(640, 480), (10, 20)])
        for b in out:
            assert 0 <= b["media_index"] < 2
            x1, y1, x2, y2 = b["box"]
            w, h = [(640, 480), (10, 20)][b["media_index"]]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    assert parse_grounding(None, (1, 1)) == []  # type: ignore[arg-type]


def test_box_to_text() -> None:
    assert box_to_text([64, 96, 320, 480], (640, 480)) == "[[100, 200, 500, 1000]]"
