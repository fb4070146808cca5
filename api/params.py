"""Checks on the request line every route shares, run before any query.

- Query and path parameters holding a character the database cannot store (U+0000, a lone
  surrogate) are 422 ``unsupported_character`` naming the parameter (:mod:`jobs.storable`).
- A path id that cannot exist (wrong prefix, length or alphabet for :mod:`jobs.ids`) is 404,
  as an id that does not exist, without asking the database (checked after authentication, so
  a caller without a key still gets 401).
"""

from __future__ import annotations

from fastapi import Request

from core.errors import NotFound
from jobs import ids, storable

#: path parameter -> (id prefix, what it names)
PATH_IDS = {"job_id": ("job", "job"), "batch_id": ("bat", "batch"), "message_id": ("msg", "webhook message")}


async def storable_params(request: Request) -> None:
    """App-wide dependency: 422 for unstorable text in the query or the path."""
    storable.check_params(request.query_params.multi_items(), "query")
    storable.check_params(request.path_params.items(), "path")


def check_path_ids(request: Request) -> None:
    for name, (prefix, kind) in PATH_IDS.items():
        value = request.path_params.get(name)
        if isinstance(value, str) and not ids.is_valid(prefix, value):
            raise NotFound(f"no {kind} {value!r}")


def check_id(value: str | None, prefix: str, kind: str) -> None:
    """A query filter naming one resource (404 when it cannot exist)."""
    if value is not None and not ids.is_valid(prefix, value):
        raise NotFound(f"no {kind} {value!r}")
