"""Text the database can store.

PostgreSQL's ``text`` and ``jsonb`` refuse U+0000, and UTF-8 has no encoding for a lone
surrogate (U+D800–U+DFFF, which Python's ``json`` and percent-decoding can produce), so a string
holding either fails deep inside the driver. Requests are checked at the door instead:
:func:`unstorable` lists every such string in a JSON value with its location, and
:func:`check` raises 422 ``unsupported_character`` naming the field. :func:`scrub` replaces the
characters (with U+FFFD) where text must be kept anyway, e.g. an invalid batch line stored as a
failed job, or an error message that quotes the client's input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from core.errors import UnsupportedCharacter

_BAD = re.compile("[\x00\ud800-\udfff]")
CODE = "unsupported_character"


def bad_char(text: str) -> str | None:
    """The first unstorable character of ``text`` as ``U+XXXX``, or None."""
    m = _BAD.search(text)
    return f"U+{ord(m.group()):04X}" if m else None


def unstorable(value: Any, loc: list[Any], limit: int = 20) -> list[dict[str, Any]]:
    """``{loc, msg, code}`` for each string (object keys included) that cannot be stored."""
    out: list[dict[str, Any]] = []
    stack: list[tuple[Any, list[Any]]] = [(value, loc)]
    while stack and len(out) < limit:
        v, where = stack.pop()
        if isinstance(v, str):
            ch = bad_char(v)
            if ch:
                out.append({"loc": where, "msg": f"contains {ch}, which cannot be stored", "code": CODE})
        elif isinstance(v, dict):
            for k, child in reversed(list(v.items())):
                key = str(k)
                if bad_char(key):
                    out.append({"loc": [*where, scrub(key)],
                                "msg": f"the key contains {bad_char(key)}, which cannot be stored",
                                "code": CODE})
                stack.append((child, [*where, scrub(key)]))
        elif isinstance(v, list | tuple):
            stack.extend((child, [*where, i]) for i, child in reversed(list(enumerate(v))))
    return out


def check(value: Any, loc: list[Any]) -> None:
    """Raise :class:`UnsupportedCharacter` (422) if ``value`` holds a string that cannot be stored."""
    errs = unstorable(value, loc)
    if errs:
        where = ".".join(str(p) for p in errs[0]["loc"]) or "body"
        raise UnsupportedCharacter(f"{where}: {errs[0]['msg']}", errors=errs)


def check_params(params: Iterable[tuple[str, str]], where: str) -> None:
    """Query or path parameters: ``loc`` is ``[where, name]``."""
    errs: list[dict[str, Any]] = []
    for name, value in params:
        errs += unstorable(value, [where, scrub(name)])
        if bad_char(name):
            errs.append({"loc": [where, scrub(name)], "msg": "the parameter name cannot be stored",
                         "code": CODE})
    if errs:
        where_ = ".".join(str(p) for p in errs[0]["loc"])
        raise UnsupportedCharacter(f"{where_}: {errs[0]['msg']}", errors=errs)


def scrub(value: Any) -> Any:
    """``value`` with every unstorable character replaced by U+FFFD (keys too)."""
    if isinstance(value, str):
        return _BAD.sub("\ufffd", value) if _BAD.search(value) else value
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value
