"""Structured-output fields at submission: good formats are accepted and stored normalised, bad
ones are 422 with a ``detail`` naming the problem and ``errors`` pointing at the field. Real
HTTP against the real API (the validation runs llguidance, which the API imports without torch)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api import helpers
from tests.api.helpers import problem_of

pytestmark = pytest.mark.services

IMG = {"type": "image", "url": "s3://bucket-a/photo.jpg"}
GOOD_SCHEMA = {"type": "object", "properties": {"caption": {"type": "string"},
                                                "tags": {"type": "array", "items": {"type": "string"},
                                                         "maxItems": 3}},
               "required": ["caption"]}


def _job(**generation: Any) -> dict[str, Any]:
    return {"media": [IMG], "generation": generation}


BAD = [
    ("unsupported keyword", {"response_format": {"type": "json_schema", "json_schema": {
        "type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}}},
     ["generation", "response_format", "json_schema"], ["if", "then", "unsupported"]),
    ("invalid schema", {"response_format": {"type": "json_schema", "json_schema": {"type": "strin"}}},
     ["generation", "response_format", "json_schema"], ["json schema", "strin"]),
    ("invalid regex", {"response_format": {"type": "regex", "pattern": "[a-z"}},
     ["generation", "response_format", "pattern"], ["regex", "unclosed character class"]),
    ("empty choices", {"response_format": {"type": "choice", "choices": []}},
     ["generation", "response_format", "choices"], ["non-empty"]),
    ("unknown type", {"response_format": {"type": "yaml"}},
     ["generation", "response_format", "type"], ["json_schema"]),
    ("json_schema missing", {"response_format": {"type": "json_schema"}},
     ["generation", "response_format", "json_schema"], ["json_schema must be an object"]),
    ("five stop strings", {"stop": ["a", "b", "c", "d", "e"]}, ["generation", "stop"], []),
    ("empty stop string", {"stop": [""]}, ["generation", "stop", 0], []),
    ("top_logprobs without logprobs", {"top_logprobs": 3}, ["generation", "top_logprobs"], ["logprobs"]),
    ("top_logprobs 21", {"logprobs": True, "top_logprobs": 21}, ["generation", "top_logprobs"], []),
]


@pytest.mark.parametrize("name,generation,loc,words", BAD, ids=[b[0] for b in BAD])
def test_bad_format_is_422(name, generation, loc, words, server, tenant_a):  # type: ignore[no-untyped-def]
    with helpers.client(server.base_url, tenant_a.api_key) as c:
        r = c.post("/v1/jobs", json=_job(**generation))
    assert r.status_code == 422, r.text[:500]
    problem = problem_of(r)
    assert loc in [e["loc"] for e in problem["errors"]], problem
    detail = problem["detail"].lower()
    for word in words:
        assert word.lower() in detail, problem


def test_good_formats_are_accepted(server, tenant_a):  # type: ignore[no-untyped-def]
    formats = [
        {"type": "json_schema", "json_schema": GOOD_SCHEMA},
        {"type": "json_schema", "json_schema": {"name": "caption", "schema": GOOD_SCHEMA, "strict": True}},
        {"type": "json_object"},
        {"type": "choice", "choices": ["cat", "dog", "neither"]},
        {"type": "regex", "pattern": "[0-9]{1,3}"},
    ]
    with helpers.client(server.base_url, tenant_a.api_key) as c:
        for fmt in formats:
            r = c.post("/v1/jobs", json=_job(response_format=fmt, stop=["\n\n"], system_prompt="Be terse.",
                                            logprobs=True, top_logprobs=2))
            assert r.status_code in (200, 201, 202), r.text[:500]
            gen = c.get(f"/v1/jobs/{r.json()['id']}").json()["request"]["generation"]
            assert gen["response_format"] == fmt
            assert (gen["stop"], gen["system_prompt"], gen["logprobs"], gen["top_logprobs"]) == \
                (["\n\n"], "Be terse.", True, 2)
