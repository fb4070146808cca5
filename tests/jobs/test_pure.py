"""Pure pieces: ids, cursors, request normalisation, defaults merging, the context bound."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.errors import InvalidCursor, InvalidRequest
from jobs import ids
from jobs.lists import decode_cursor, encode_cursor, parse_time
from jobs.requests import (
    RequestLimits,
    default_prompt,
    json_depth,
    merge_defaults,
    normalize_job_request,
    prompt_token_lower_bound,
)


class Checker:
    def media(self, url: str, kind: str) -> str:
        if not url.startswith("s3://"):
            raise _Coded("url_not_allowed", "only s3 here")
        return url

    def webhook(self, url: str) -> str:
        return url

    def manifest(self, url: str) -> str:
        return url

    def output(self, url: str) -> str:
        return url


class _Coded(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def test_ids_are_prefixed_sortable_and_unique():
    made = [ids.job_id() for _ in range(5000)]
    assert all(i.startswith("job_") and len(i) == 30 for i in made)
    assert made == sorted(made) and len(set(made)) == len(made)
    assert ids.batch_id().startswith("bat_") and ids.message_id().startswith("msg_")


def test_cursor_round_trip_and_rejects():
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, "job_x")) == (at, "job_x")
    for bad in ("", "!!", "e30", "WzEsMl0", "x" * 500):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)
    assert parse_time("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(InvalidRequest):
        parse_time("soon")


def test_normalisation_fills_every_default():
    req = normalize_job_request({"media": [{"type": "video", "url": "s3://b-1/v.mp4"}]}, Checker(),
                                RequestLimits(default_ttl_seconds=60))
    assert req == {
        "media": [{"type": "video", "url": "s3://b-1/v.mp4", "num_frames": 8, "start": 0.0, "end": None,
                   "max_tiles": 1}],
        "image_mode": "separate", "prompts": ["Describe the video in detail."], "task": "chat",
        "generation": {"max_new_tokens": 512, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
                       "top_k": 50, "repetition_penalty": 1.0, "seed": None, "response_format": None,
                       "stop": None, "system_prompt": None, "logprobs": False, "top_logprobs": 0},
        "webhook": None, "custom_id": None, "metadata": {}, "priority": 0, "ttl_seconds": 60,
    }


def test_errors_list_every_field_with_its_location():
    with pytest.raises(InvalidRequest) as exc:
        media = [{"type": "image", "url": "http://x/y"},
                 {"type": "image", "url": "s3://b-1/k", "max_tiles": 0}]
        normalize_job_request({"media": media, "prompts": ["ok"], "extra": True}, Checker(), RequestLimits(),
                              loc=["manifest", 7])
    locs = [e["loc"] for e in exc.value.errors]
    assert ["manifest", 7, "media", 1, "max_tiles"] in locs and ["manifest", 7, "extra"] in locs
    with pytest.raises(InvalidRequest) as exc:
        normalize_job_request({"media": [{"type": "image", "url": "http://x/y"}]}, Checker(), RequestLimits())
    assert exc.value.code == "url_not_allowed" and exc.value.errors[0]["loc"] == ["media", 0, "url"]


def test_context_lower_bound():
    req = {"media": [{"type": "image"}, {"type": "video", "num_frames": 10}], "prompts": ["x" * 256]}
    assert prompt_token_lower_bound(req) == 256 * 11 + 2
    ok = {"media": [{"type": "video", "url": "s3://b-1/v", "num_frames": 64}], "prompts": ["p"],
          "generation": {"max_new_tokens": 16000}}
    normalize_job_request(ok, Checker(), RequestLimits(max_context_tokens=32768))
    with pytest.raises(InvalidRequest) as exc:
        normalize_job_request(ok, Checker(), RequestLimits(max_context_tokens=16384))
    assert exc.value.code == "context_too_long"


def test_defaults_merge_objects_key_by_key():
    defaults = {"prompts": ["a"], "generation": {"max_new_tokens": 64, "top_k": 5}, "metadata": {"x": 1}}
    job = {"generation": {"top_k": 9}, "metadata": {"y": 2}, "prompts": ["b"]}
    merged = merge_defaults(defaults, job)
    assert merged == {"prompts": ["b"], "generation": {"max_new_tokens": 64, "top_k": 9},
                      "metadata": {"x": 1, "y": 2}}
    assert merge_defaults(None, job) is job and merge_defaults(defaults, [1]) == [1]


def test_helpers():
    assert default_prompt([]) == "Describe the image in detail."
    assert json_depth({"a": [1, {"b": 2}]}, 10) == 3 and json_depth(1, 10) == 0
