"""Normalising a source's job objects quickly: one full normalisation per item shape, then only
what differs per item is judged.

A source yields millions of objects of one shape: ``{"custom_id", "media": [{"type", "url"
[, "byte_range"]}] [, "metadata"]}`` with the batch's ``defaults`` merged under each. Everything
but those fields is the same for every item, so the full :func:`normalize_job_request` (the
pydantic schema, the prompts' context bound, every string's storability) runs once per shape and
its result is the template; each item then only has its custom_id, URL, byte range and metadata
checked with the same functions the full path uses. Anything unusual (another shape, a failed
check) goes through the full path, which also reports the problem exactly as for a manifest line.
"""

from __future__ import annotations

from typing import Any

from jobs import storable
from jobs.requests import RequestLimits, UrlChecker, _check_metadata, normalize_job_request

_ITEM_KEYS = frozenset({"custom_id", "media", "metadata"})
MAX_CUSTOM_ID = 256


class SourceNormalizer:
    """A drop-in for :func:`normalize_job_request` in :func:`jobs.batches.validate_lines`."""

    def __init__(self) -> None:
        self.templates: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.fast = 0  # items normalised from a template (for tests and benchmarks)

    def __call__(self, raw: Any, checker: UrlChecker, limits: RequestLimits, *,
                 loc: list[Any] | None = None) -> dict[str, Any]:
        key = self._shape(raw)
        template = self.templates.get(key) if key is not None else None
        if template is not None:
            req = self._from_template(template, raw, checker)
            if req is not None:
                self.fast += 1
                return req
        req = normalize_job_request(raw, checker, limits, loc=loc)
        if key is not None and template is None:
            self.templates[key] = req
        return req

    @staticmethod
    def _shape(raw: Any) -> tuple[Any, ...] | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("custom_id"), str):
            return None
        media = raw.get("media")
        if not isinstance(media, list) or len(media) != 1 or not isinstance(media[0], dict):
            return None
        item = media[0]
        if not set(item) <= {"type", "url", "byte_range"}:
            return None
        # The fields besides the item's own come from the defaults: the same for every item.
        rest = tuple(sorted((k, repr(v)) for k, v in raw.items() if k not in _ITEM_KEYS))
        return (rest, item.get("type"), "byte_range" in item, "metadata" in raw)

    @staticmethod
    def _from_template(template: dict[str, Any], raw: dict[str, Any],
                       checker: UrlChecker) -> dict[str, Any] | None:
        custom = raw["custom_id"]
        if not 1 <= len(custom) <= MAX_CUSTOM_ID or storable.bad_char(custom):
            return None
        item = raw["media"][0]
        url = item.get("url")
        if not isinstance(url, str) or storable.bad_char(url):
            return None
        try:
            checked = checker.media(url, item["type"])
        except Exception:
            return None
        media = dict(template["media"][0])
        media["url"] = checked
        if "byte_range" in item:
            rng = item["byte_range"]
            ints = isinstance(rng, list) and len(rng) == 2 and all(type(x) is int and x >= 0 for x in rng)
            if not ints or rng[1] == 0 or checked.split(":", 1)[0] not in ("s3", "file"):
                return None
            media["byte_range"] = list(rng)
        meta = raw.get("metadata")
        bad_meta = meta is not None and (
            not isinstance(meta, dict) or _check_metadata(meta, []) or storable.unstorable(meta, []))
        if bad_meta:
            return None
        req = dict(template)
        req["custom_id"] = custom
        req["media"] = [media]
        req["metadata"] = meta if meta is not None else {}
        return req


__all__ = ["SourceNormalizer"]
