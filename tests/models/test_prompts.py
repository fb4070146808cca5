"""models.prompts against the kit's prompts.json (every template, every case) and unit rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import prompts
from models.errors import InvalidInput, UnknownTemplate


def _templates(kit_dir: Path) -> dict:
    return json.loads((kit_dir / "prompts" / "prompts.json").read_text(encoding="utf-8"))["templates"]


def _cases(kit_dir: Path) -> list[tuple[str, dict]]:
    return [(name, c) for name, t in _templates(kit_dir).items() for c in t["cases"]]


def test_template_fields_match_kit(kit_dir: Path) -> None:
    for name, rec in _templates(kit_dir).items():
        t = prompts.get_template(name)
        assert t.system_template == rec["system_template"]
        assert t.system_message == rec["system_message"] == rec["model_system_message"]
        assert list(t.roles) == rec["roles"]
        assert t.sep == rec["sep"]
        assert t.sep_style == rec["sep_style"]
        assert t.stop_str == rec["stop_token_string_used_by_chat"]
        assert t.conversation_stop_str == rec["stop_str"]


def test_every_kit_case(kit_dir: Path) -> None:
    checked = 0
    for name, c in _cases(kit_dir):
        t = prompts.get_template(name)
        if c["call"] == "batch_chat":
            got = prompts.build_batch_queries(t, c["questions"], c["num_patches_list"])
            assert got == c["queries"], (name, c["id"])
            checked += 1
            continue
        n_tiles = c["n_tiles_in_pixel_values"]
        npl = c["num_patches_list"] if c["num_patches_list"] is not None else ([n_tiles] if n_tiles else [])
        history = [tuple(h) for h in c["history_in"]] if c["history_in"] is not None else None
        kwargs = dict(system_message=c["system_message_override"], num_tiles=n_tiles or None)
        if c.get("error"):
            with pytest.raises(InvalidInput):
                prompts.build_query(t, c["question"], history, npl, **kwargs)
            checked += 1
            continue
        query = prompts.build_query(t, c["question"], history, npl, **kwargs)
        assert query == c["query"], (name, c["id"])
        assert query.count(prompts.IMG_CONTEXT_TOKEN) == c["count_img_context"]
        prepared = prompts.prepare_question(c["question"], has_images=bool(npl), history=history)
        hist = prompts.next_history(history, prepared, c["response"])
        assert [list(h) for h in hist] == c["history_out"], (name, c["id"])
        checked += 1
    assert checked == sum(len(t["cases"]) for t in _templates(kit_dir).values())


def test_unknown_template() -> None:
    with pytest.raises(UnknownTemplate) as e:
        prompts.get_template("vicuna_v1.1")
    assert e.value.code == "unknown_template"


def test_question_helpers() -> None:
    assert prompts.multi_image_question(2, "Q") == "Image-1: <image>\nImage-2: <image>\nQ"
    assert prompts.multi_image_question(2, "Q", combined=True) == "<image>\nQ"
    assert prompts.video_question(3, "Q") == "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nQ"
    with pytest.raises(InvalidInput):
        prompts.video_question(0, "Q")


def test_prefix_rules() -> None:
    # chat: prefix only without history; batch_chat: whenever images are given
    assert prompts.prepare_question("Q", has_images=True, history=None) == "<image>\nQ"
    assert prompts.prepare_question("Q", has_images=True, history=[]) == "Q"
    assert prompts.prepare_question("Q", has_images=False, history=None) == "Q"
    assert prompts.prepare_question("Q", has_images=True, history=[("a", "b")], auto_prefix="batch_chat") \
        == "<image>\nQ"
    assert prompts.prepare_question("x <image> y", has_images=True) == "x <image> y"


def test_render_edge_cases() -> None:
    t = prompts.get_template("internlm2-chat")
    # an empty answer in the history renders as the bare role (MPT `if message:`)
    q = prompts.build_query(t, "B", [("A", "")], None, system_message="S")
    assert q == ("<|im_start|>system\nS<|im_end|><|im_start|>user\nA<|im_end|>"
                 "<|im_start|>assistant\n<|im_start|>user\nB<|im_end|><|im_start|>assistant\n")
    # braces in the system message are not re-formatted
    assert "{x}" in prompts.build_query(t, "B", None, None, system_message="{x}")
    # placeholders left over stay literal; strict refuses both directions
    q = prompts.build_query(t, "<image><image>", None, [1])
    assert q.count("<image>") == 1 and q.count(prompts.IMG_CONTEXT_TOKEN) == 256
    with pytest.raises(InvalidInput):
        prompts.build_query(t, "<image><image>", None, [1], strict=True)
    with pytest.raises(InvalidInput):
        prompts.build_query(t, "Q", None, [1, 2], strict=True)
    with pytest.raises(InvalidInput):
        prompts.build_query(t, "Q", [("a", "b")], [1], auto_prefix="batch_chat")


def test_clean_response() -> None:
    t = prompts.get_template("phi3-chat")
    assert prompts.clean_response(t, "  A cat.<|end|> junk") == "A cat."
    assert prompts.clean_response(prompts.get_template("internvl2_5"), "Hi<|im_end|>") == "Hi"
