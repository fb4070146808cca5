"""``generation.response_format``: checked at submission, turned into a grammar for the worker.

Formats (API.md, "Structured output"):

    {"type": "json_schema", "json_schema": {...schema...}}     # or OpenAI's {"name", "schema"}
    {"type": "json_object"}                                    # any JSON object
    {"type": "choice", "choices": ["cat", "dog"]}              # exactly one of the strings
    {"type": "regex", "pattern": "[0-9]{1,3}"}                 # the whole answer matches

The grammar engine is llguidance (docs/STRUCTURED_OUTPUT.md). The API validates with the same
library the worker decodes with (it imports no torch), so a format accepted here always compiles
in the worker: a bad one is a 422 naming the problem (the unsupported schema keyword, the regex
error, the empty choice list), never a failed job. JSON schemas are also checked against the
JSON Schema 2020-12 meta-schema first, for messages that point at the bad part.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema

MAX_SCHEMA_BYTES = 64 * 1024
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 1000
MAX_PATTERN_CHARS = 4096
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20
FORMAT_TYPES = ("json_schema", "json_object", "choice", "regex")
_COMPACT: Any = {"whitespace_flexible": False}
_KEYS = {"json_schema": {"type", "json_schema"}, "json_object": {"type"}, "choice": {"type", "choices"},
         "regex": {"type", "pattern"}}


class FormatError(ValueError):
    """A response_format that cannot be used; ``loc`` is relative to ``response_format``."""

    def __init__(self, msg: str, loc: list[Any] | None = None) -> None:
        super().__init__(msg)
        self.loc = loc or []


def schema_of(fmt: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema of a json_schema / json_object format (OpenAI's ``{"name", "schema",
    "strict"}`` wrapper unwrapped: ``schema`` is no JSON Schema keyword, so no schema has it)."""
    if fmt["type"] == "json_object":
        return {"type": "object"}
    inner = fmt["json_schema"]
    if isinstance(inner.get("schema"), Mapping):
        return dict(inner["schema"])
    return dict(inner)


def grammar_for(fmt: Mapping[str, Any]) -> str:
    """The llguidance grammar of a (checked) format."""
    import llguidance  # on first use: a service whose jobs ask for no format never loads it

    kind = fmt["type"]
    if kind in ("json_schema", "json_object"):
        # Compact JSON (no free whitespace): a model cannot spend its tokens on blank space, and
        # the separators are the ones json.dumps writes (", " is not allowed: "," and ":").
        return llguidance.LLMatcher.grammar_from_json_schema(schema_of(fmt), defaults=_COMPACT)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(fmt["pattern"])
    if kind == "choice":
        return llguidance.grammar_from("choice", json.dumps(list(fmt["choices"])))
    raise FormatError(f"unknown response_format type {kind!r}", ["type"])


def is_json(fmt: Mapping[str, Any] | None) -> bool:
    return fmt is not None and fmt.get("type") in ("json_schema", "json_object")


def _shape(fmt: Any) -> None:
    if not isinstance(fmt, Mapping):
        raise FormatError("response_format must be an object")
    kind = fmt.get("type")
    if kind not in FORMAT_TYPES:
        raise FormatError(f"type must be one of {', '.join(FORMAT_TYPES)}; got {kind!r}", ["type"])
    extra = sorted(set(fmt) - _KEYS[kind])
    if extra:
        raise FormatError(f"unknown field {extra[0]!r} for type {kind!r}", [extra[0]])
    if kind == "json_schema":
        inner = fmt.get("json_schema")
        if not isinstance(inner, Mapping):
            raise FormatError("json_schema must be an object (a JSON schema)", ["json_schema"])
        if len(json.dumps(inner)) > MAX_SCHEMA_BYTES:
            raise FormatError(f"json_schema is larger than {MAX_SCHEMA_BYTES} bytes as JSON", ["json_schema"])
        schema = schema_of(fmt)
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise FormatError(f"not a valid JSON Schema (2020-12) at {where}: {exc.message}",
                              ["json_schema"]) from None
    elif kind == "choice":
        choices = fmt.get("choices")
        if not isinstance(choices, list) or not choices:
            raise FormatError("choices must be a non-empty list of strings", ["choices"])
        if len(choices) > MAX_CHOICES:
            raise FormatError(f"at most {MAX_CHOICES} choices", ["choices"])
        for i, c in enumerate(choices):
            if not isinstance(c, str) or not c or len(c) > MAX_CHOICE_CHARS:
                raise FormatError(f"each choice must be a string of 1 to {MAX_CHOICE_CHARS} characters",
                                  ["choices", i])
    elif kind == "regex":
        pattern = fmt.get("pattern")
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_CHARS:
            raise FormatError(f"pattern must be a regex of 1 to {MAX_PATTERN_CHARS} characters", ["pattern"])


def check_format(fmt: Any) -> None:
    """Raises :class:`FormatError` with a message a user can act on."""
    _shape(fmt)
    import llguidance

    problem = llguidance.LLMatcher.validate_grammar(grammar_for(fmt))
    if problem:
        field = {"json_schema": "json_schema", "json_object": "type", "choice": "choices",
                 "regex": "pattern"}[fmt["type"]]
        problem = problem.strip().replace("Unimplemented keys", "unsupported JSON Schema keywords")
        raise FormatError(f"{field} cannot be used for constrained decoding: {problem}", [field])


def check_generation(gen: Mapping[str, Any], loc: list[Any]) -> list[dict[str, Any]]:
    """Errors (``{loc, msg, code}``) in the structured-output fields of ``generation``."""
    errs: list[dict[str, Any]] = []
    fmt = gen.get("response_format")
    if fmt is not None:
        try:
            check_format(fmt)
        except FormatError as exc:
            errs.append({"loc": [*loc, "response_format", *exc.loc], "msg": str(exc),
                         "code": "invalid_response_format"})
    if gen.get("top_logprobs") and not gen.get("logprobs"):
        errs.append({"loc": [*loc, "top_logprobs"], "msg": "top_logprobs needs logprobs: true",
                     "code": "invalid_request"})
    return errs


__all__ = ["FORMAT_TYPES", "FormatError", "check_format", "check_generation", "grammar_for", "is_json",
           "schema_of"]
