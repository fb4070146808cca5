"""The chat completion → job request mapping, without services."""

from __future__ import annotations

import pytest

from api.openai.errors import OpenAIError
from api.openai.mapping import map_request, media_question

IMG = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}


def test_single_turn_is_a_plain_job() -> None:
    m = map_request({"model": "m", "max_completion_tokens": 7, "stop": "END", "seed": 3,
                     "messages": [{"role": "developer", "content": "Be brief."},
                                  {"role": "user", "content": [IMG, {"type": "text", "text": "What?"}]}]})
    assert m.job == {"media": [{"type": "image", "url": "https://example.com/a.png", "max_tiles": 1}],
                     "prompts": ["What?"],
                     "generation": {"max_new_tokens": 7, "seed": 3, "stop": ["END"],
                                    "system_prompt": "Be brief."}}
    assert not m.stream


def test_history_questions_carry_the_placeholders_chat_would_add() -> None:
    m = map_request({"model": "m", "temperature": 0.7, "messages": [
        {"role": "user", "content": [IMG, {"type": "text", "text": "one"}]},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": [IMG, IMG, {"type": "text", "text": "two"}]}]})
    assert m.job["history"] == [["<image>\none", "a1"]]
    assert m.job["prompts"] == ["Image-1: <image>\nImage-2: <image>\ntwo"]
    assert len(m.job["media"]) == 3
    assert m.job["generation"] == {"do_sample": True, "temperature": 0.7}


def test_mixed_media_are_labelled_as_the_worker_labels_them() -> None:
    media = [{"type": "image"}, {"type": "video", "num_frames": 2}, {"type": "video", "num_frames": 1}]
    assert media_question("q", media) == ("Image-1: <image>\nVideo-1:\nFrame1: <image>\nFrame2: <image>\n"
                                          "Video-2:\nFrame1: <image>\nq")


USER = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "messages": USER, "n": 2}, "n"),
    ({"model": "m", "messages": USER, "tools": [{"type": "function"}]}, "tools"),
    ({"model": "m", "messages": USER, "bogus": 1}, "bogus"),
    ({"model": "m", "messages": [{"role": "assistant", "content": "x"}]}, "messages.0.role"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]},
     "messages.1.role"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
])
def test_what_captionq_cannot_express_is_refused(body: dict, param: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(OpenAIError) as err:
        map_request(body)
    assert err.value.param == param and err.value.status == 400
