"""Twenty JSON schemas for the structured-output tests: nested objects, arrays with min/max
items, enums, numbers with bounds, required and optional fields. Strings carry ``maxLength``
and numbers bounds so that a grammar can finish within the tests' ``max_new_tokens`` when the
model's choices are noise (the tiny random-weight checkpoints); unbounded fields are covered by
their own test (a grammar cut short ends with ``length`` and no ``json``)."""

from __future__ import annotations

from typing import Any

S = {"type": "string", "maxLength": 6}
INT = {"type": "integer", "minimum": 0, "maximum": 99}


def _obj(props: dict[str, Any], required: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False, **kw}


SCHEMAS: list[dict[str, Any]] = [
    _obj({"caption": S}),
    _obj({"nsfw": {"type": "boolean"}}),
    _obj({"count": INT}),
    _obj({"label": {"enum": ["cat", "dog", "bird"]}}),
    _obj({"score": {"type": "number", "minimum": 0, "maximum": 1}}),
    _obj({"caption": S, "nsfw": {"type": "boolean"}, "count": INT}),
    _obj({"caption": S, "note": S}, required=["caption"]),
    _obj({"a": INT, "b": INT, "c": {"type": "boolean"}}, required=[]),
    _obj({"objects": {"type": "array", "items": S, "minItems": 1, "maxItems": 3}}),
    _obj({"boxes": {"type": "array", "items": {"type": "array", "items": INT, "minItems": 4, "maxItems": 4},
                    "maxItems": 2}}),
    _obj({"tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 2,
                   "maxItems": 2}}),
    _obj({"subject": _obj({"name": S, "age": INT})}),
    _obj({"scene": _obj({"place": {"enum": ["indoor", "outdoor"]},
                         "light": _obj({"bright": {"type": "boolean"}})})}),
    _obj({"people": {"type": "array", "items": _obj({"name": S, "smiling": {"type": "boolean"}}),
                     "maxItems": 2}}),
    _obj({"kind": {"type": "string", "enum": ["photo", "drawing"]},
          "year": {"type": "integer", "minimum": 1900, "maximum": 2030}}),
    _obj({"value": {"anyOf": [INT, {"type": "null"}]}}),
    _obj({"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"}}),
    _obj({"ok": {"const": True}, "n": INT}),
    {"type": "array", "items": INT, "minItems": 1, "maxItems": 3},
    _obj({"caption": S, "objects": {"type": "array", "items": S, "maxItems": 2}, "count": INT,
          "nsfw": {"type": "boolean"}, "meta": _obj({"lang": {"enum": ["en", "de"]}}, required=[])},
         required=["caption", "objects", "count", "nsfw"]),
]
assert len(SCHEMAS) == 20
