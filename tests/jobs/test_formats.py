"""jobs.formats without services: what is accepted, what is refused and how it is named."""

from __future__ import annotations

import pytest

from jobs.formats import FormatError, check_format, check_generation, grammar_for, is_json, schema_of

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize("fmt", [
    {"type": "json_schema", "json_schema": SCHEMA},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}},
    {"type": "json_object"},
    {"type": "choice", "choices": ["yes", "no", 'say "maybe"']},
    {"type": "regex", "pattern": r"\d{1,3}(\.\d)?"},
])
def test_good_formats_pass_and_compile(fmt: dict) -> None:
    check_format(fmt)
    assert grammar_for(fmt)


def test_openai_wrapper_is_unwrapped() -> None:
    assert schema_of({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}) == SCHEMA
    assert schema_of({"type": "json_object"}) == {"type": "object"}
    assert is_json({"type": "json_object"})
    assert not is_json({"type": "regex", "pattern": "a"}) and not is_json(None)


@pytest.mark.parametrize("fmt,loc,words", [
    ({"type": "json_schema", "json_schema": {"type": "object", "dependentSchemas": {"a": {}}}},
     ["json_schema"], ["unsupported", "dependentSchemas"]),
    ({"type": "json_schema", "json_schema": {"type": "object", "properties": {"a": {"minimum": "x"}}}},
     ["json_schema"], ["properties/a/minimum"]),
    ({"type": "regex", "pattern": "(a"}, ["pattern"], ["regex"]),
    ({"type": "choice", "choices": []}, ["choices"], ["non-empty"]),
    ({"type": "choice", "choices": ["a", 3]}, ["choices", 1], ["string"]),
    ({"type": "json_object", "json_schema": SCHEMA}, ["json_schema"], ["unknown field"]),
    ("json", [], ["object"]),
])
def test_bad_formats_name_the_problem(fmt: object, loc: list, words: list[str]) -> None:
    with pytest.raises(FormatError) as err:
        check_format(fmt)
    assert err.value.loc == loc
    for w in words:
        assert w in str(err.value)


def test_check_generation_locates_errors() -> None:
    errs = check_generation({"response_format": {"type": "regex", "pattern": "["}, "top_logprobs": 2},
                            ["generation"])
    assert [e["loc"] for e in errs] == [["generation", "response_format", "pattern"],
                                        ["generation", "top_logprobs"]]
    assert errs[0]["code"] == "invalid_response_format"
    assert check_generation({"response_format": None, "logprobs": True, "top_logprobs": 2}, []) == []
