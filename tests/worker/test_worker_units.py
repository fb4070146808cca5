"""The worker's pure parts: question layout (against the official query strings in the kit),
EXIF handling on a real local fetch, grounding boxes, error mapping, batch results, and the SSE
text tracker."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from api.routes.events import TextTracker, _live_changes, sse
from core.errors import JobTimeout, TransientError
from models import prompts
from models.errors import ContextTooLong, OutOfMemory
from storage.config import StorageConfig
from storage.errors import MediaNotFound
from worker.finalize import ndjson, results_url
from worker.pipeline import collect_boxes, generation_params
from worker.prepare import PreparedItem, layout, prepare_item, video_bound
from worker.record import JobOutcome, RoundResult, job_error, metrics_json, output_json, retry_countdown

KIT = Path(__file__).resolve().parents[1] / "data" / "conformance"


@pytest.fixture(scope="module")
def kit_cases() -> dict[str, Any]:
    data = json.loads((KIT / "prompts" / "prompts.json").read_text())
    t = data["templates"]["internlm2-chat"]
    return {c["id"]: c for c in t["cases"]}


def item(kind: str, patches: list[int], size: tuple[int, int] = (448, 448)) -> PreparedItem:
    n = sum(patches)
    pv = np.full((n, 3, 2, 2), float(len(patches)), np.float32)
    return PreparedItem(kind, pv, patches, size, len(patches) if kind == "video" else 0)


def official_query(question: str, patches: list[int] | None) -> str:
    return prompts.build_query(prompts.get_template("internlm2-chat"), question, None, patches)


# --- layout: the first question as the model card builds it -----------------------------------------
def test_two_images_separate_is_the_model_card_question(kit_cases: dict[str, Any]) -> None:
    case = kit_cases["two_images_separate_5_3"]
    prep = layout([item("image", [5]), item("image", [3])], "Describe the two images in detail.", "separate")
    assert prep.question == case["question"]
    assert prep.num_patches_list == [5, 3]
    assert official_query(prep.question, prep.num_patches_list) == case["query"]


def test_two_images_combined_is_one_image_block(kit_cases: dict[str, Any]) -> None:
    case = kit_cases["two_images_combined_single_placeholder"]
    prep = layout([item("image", [5]), item("image", [3])], "Describe the two images in detail.", "combined")
    assert prep.question == case["question"] and prep.num_patches_list == [8]
    assert prep.pixel_values is not None and prep.pixel_values.shape[0] == 8
    assert official_query(prep.question, prep.num_patches_list) == case["query"]


def test_one_image_relies_on_the_automatic_prefix(kit_cases: dict[str, Any]) -> None:
    case = kit_cases["image7_auto_prefix"]
    prep = layout([item("image", [7])], case["question"], "separate")
    assert prep.question == case["question"]  # chat() adds "<image>\n" itself
    assert official_query(prep.question, prep.num_patches_list) == case["query"]


def test_video_frames_are_numbered(kit_cases: dict[str, Any]) -> None:
    case = kit_cases["video_8_frames"]
    prompt = case["question"].rsplit("\n", 1)[1]
    prep = layout([item("video", [1] * 8)], prompt, "separate")
    assert prep.question == case["question"]
    assert official_query(prep.question, prep.num_patches_list) == case["query"]


def test_explicit_placeholders_are_kept() -> None:
    prep = layout([item("image", [2]), item("image", [1])], "<image>\n<image>\nCompare.", "separate")
    assert prep.question == "<image>\n<image>\nCompare." and prep.num_patches_list == [2, 1]


def test_mixed_media_keeps_media_order_and_pixels() -> None:
    img, vid = item("image", [2]), item("video", [1, 1])
    prep = layout([vid, img, item("video", [1])], "What is shown?", "separate")
    assert prep.question == ("Video-1:\nFrame1: <image>\nFrame2: <image>\nImage-1: <image>\n"
                             "Video-2:\nFrame1: <image>\nWhat is shown?")
    assert prep.num_patches_list == [1, 1, 2, 1]
    assert prep.pixel_values is not None
    assert prep.pixel_values[:, 0, 0, 0].tolist() == [2, 2, 1, 1, 1]  # video, image, video
    comb = layout([vid, item("image", [1]), img], "Q", "combined")
    assert comb.question == "<image>\nFrame1: <image>\nFrame2: <image>\nQ"
    assert comb.num_patches_list == [3, 1, 1]


def test_text_only_has_no_pixels() -> None:
    prep = layout([], "Hello", "separate")
    assert (prep.question, prep.pixel_values, prep.num_patches_list) == ("Hello", None, None)


def test_video_bound_is_the_model_card_default_unless_narrowed() -> None:
    assert video_bound({"start": 0.0, "end": None}) is None
    assert video_bound({"start": 0.5, "end": 2.0}) == (0.5, 2.0)
    assert video_bound({"start": 1.0, "end": None}) == (1.0, 100000.0)


# --- EXIF orientation, through the real local-file fetch -------------------------------------------
def test_exif_orientation_is_applied_before_tiling(tmp_path: Path) -> None:
    img = Image.new("RGB", (900, 300), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    (tmp_path / "sideways.jpg").write_bytes(buf.getvalue())
    cfg = StorageConfig(media_root=tmp_path, local_files_allowed=True)
    got = prepare_item({"type": "image", "url": f"file://{tmp_path}/sideways.jpg", "max_tiles": 6}, cfg)
    assert got.size == (300, 900)  # upright: portrait, not the stored landscape
    assert got.num_patches == [4]  # 1x3 grid + thumbnail for a 1:3 portrait image
    with pytest.raises(MediaNotFound):
        prepare_item({"type": "image", "url": f"file://{tmp_path}/missing.jpg"}, cfg)


# --- grounding ----------------------------------------------------------------------------------
def test_grounding_boxes_are_pixels_of_the_original_image() -> None:
    items = [item("video", [1], (320, 240)), item("image", [3], (1000, 40)), item("image", [1], (200, 100))]
    texts = ["<ref>the bar</ref><box>[[0, 0, 500, 1000]]</box>",
             "Image-2: <ref>a dot</ref><box>[[100, 200, 300, 400]]</box> and <box>[[0,0,1000,1000]]</box>"]
    boxes = collect_boxes(["the bar", "a dot"], texts, items)
    assert boxes == [
        {"label": "the bar", "box": [0.0, 0.0, 500.0, 40.0], "media_index": 1},
        {"label": "a dot", "box": [20.0, 20.0, 60.0, 40.0], "media_index": 2},
        {"label": "a dot", "box": [0.0, 0.0, 200.0, 100.0], "media_index": 2},
    ]
    assert collect_boxes(["x"], ["no boxes here"], items) == []


# --- records and errors -------------------------------------------------------------------------
def test_output_and_metrics_json() -> None:
    out = JobOutcome(rounds=[RoundResult("a", "one", "length", 10, 4),
                             RoundResult("b", "two", "stop", 20, 3)], engine_seconds=0.25)
    assert output_json(out) == {"text": "two", "rounds": [
        {"prompt": "a", "text": "one", "finish_reason": "length"},
        {"prompt": "b", "text": "two", "finish_reason": "stop"}]}
    m = metrics_json(out, tiles=13, frames=0, model="m")
    assert (m["input_tokens"], m["output_tokens"], m["tiles"], m["model"]) == (30, 7, 13, "m")
    assert m["engine_seconds"] == 0.25


def test_output_and_metrics_json_of_a_job_with_tasks() -> None:
    from worker.record import TasksOutcome

    caption = JobOutcome(rounds=[RoundResult("a", "one", "stop", 10, 4, vision_tiles=3)])
    talk = JobOutcome(rounds=[RoundResult("b", "two", "stop", 12, 5),
                              RoundResult("c", "three", "length", 20, 6)])
    out = TasksOutcome({"caption": caption, "talk": talk}, engine_seconds=1.0)
    assert output_json(out) == {"tasks": {"caption": output_json(caption), "talk": output_json(talk)}}
    m = metrics_json(out, tiles=3, frames=0, model="m")
    assert (m["input_tokens"], m["output_tokens"], m["vision_tiles"]) == (42, 15, 3)
    assert m["finish_reason"] == "length"
    assert m["tasks"] == {"caption": {"input_tokens": 10, "output_tokens": 4, "finish_reason": "stop"},
                          "talk": {"input_tokens": 32, "output_tokens": 11, "finish_reason": "length"}}


def test_error_mapping() -> None:
    from celery.exceptions import SoftTimeLimitExceeded
    from sqlalchemy.exc import OperationalError

    assert job_error(MediaNotFound("gone")).code == "media_not_found"
    assert job_error(ContextTooLong("long")).code == "context_too_long"
    oom = job_error(OutOfMemory("oom"))
    assert oom.code == "out_of_memory" and oom.retryable
    assert isinstance(job_error(SoftTimeLimitExceeded()), JobTimeout)
    assert isinstance(job_error(OperationalError("select", {}, Exception("down"))), TransientError)
    err = job_error(KeyError("surprise"))
    assert err.code == "internal" and not err.retryable


def test_retry_countdown_grows_with_jitter() -> None:
    for n in range(8):
        assert 1.0 <= retry_countdown(n) <= 120.0
    assert max(retry_countdown(6) for _ in range(200)) > 8.0


def test_generation_params_from_the_request() -> None:
    p = generation_params({"max_new_tokens": 16, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
                           "top_k": 50, "repetition_penalty": 1.0, "seed": None})
    assert (p.max_new_tokens, p.do_sample, p.top_k) == (16, False, 50)
    p.validate()


def test_results_url_and_ndjson() -> None:
    assert results_url("s3://b/out/") == "s3://b/out/results.jsonl"
    assert results_url("s3://b/out") == "s3://b/out/results.jsonl"
    assert results_url("s3://b/x.jsonl") == "s3://b/x.jsonl"
    lines = [{"job_id": f"job_{i}", "output": {"text": "é"}} for i in range(5)]
    chunks = list(ndjson(iter(lines), chunk_bytes=60))
    assert len(chunks) > 1
    assert [json.loads(x) for x in b"".join(chunks).decode().splitlines()] == lines


# --- SSE ----------------------------------------------------------------------------------------
def test_text_tracker_trims_overlap_and_follows_rounds() -> None:
    t = TextTracker()
    assert t.from_full("Hello wo", 0) == "Hello wo"
    assert t.from_delta(0, 5, " wo") is None  # already in the snapshot
    assert t.from_delta(0, 6, "world") == "rld"  # overlaps the snapshot
    assert t.from_delta(0, 11, "!") == "!"
    assert t.from_delta(1, 0, "Next") == "Next" and t.round == 1
    assert t.from_delta(0, 12, "late") is None  # an old round
    db = TextTracker()  # local mode: full texts without round numbers
    assert db.from_full("abc") == "abc" and db.from_full("abcde") == "de"
    assert db.from_full("x") == "x" and db.round == 1


def test_live_status_and_done_need_no_database_read() -> None:
    job = {"id": "job_1", "status": "succeeded", "output": {"text": "hi"}}
    assert _live_changes("job_1", {"status": "running"}, "queued") == (
        [sse("status", {"id": "job_1", "status": "running"})], "running")
    assert _live_changes("job_1", {"status": "running"}, "running") == ([], "running")
    assert _live_changes("job_1", {"status": "succeeded", "job": job}, "running") == (
        [sse("status", {"id": "job_1", "status": "succeeded"}), sse("done", job)], "succeeded")
    # A terminal status without the committed job (or a job that is not final): read the database.
    assert _live_changes("job_1", {"status": "failed"}, "running") is None
    assert _live_changes("job_1", {"status": "running", "job": {**job, "status": "running"}}, None) is None


def test_sse_frame() -> None:
    assert sse("token", {"text": "a\nb"}) == b'event: token\ndata: {"text":"a\\nb"}\n\n'
