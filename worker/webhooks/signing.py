"""Standard Webhooks signing: the body we send and the three headers that authenticate it.

Pure functions, no I/O. The scheme (https://www.standardwebhooks.com, and API.md "Webhooks"):

- ``webhook-id``: the message id (``msg_…``), the same on every attempt, so receivers dedupe on it;
- ``webhook-timestamp``: Unix seconds of *this attempt* (receivers reject stale timestamps, so a
  retry hours later must be signed afresh — the body stays byte-identical, only this changes);
- ``webhook-signature``: ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), where key
  is the base64-decoded part of the ``whsec_…`` secret. During a secret rotation's grace period we
  send one signature per valid secret, space-separated; a receiver holding either secret verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

SECRET_PREFIX = "whsec_"


class InvalidSecret(ValueError):
    """A webhook secret that is not ``whsec_`` + base64 of a non-empty key."""


def decode_secret(secret: str) -> bytes:
    """The HMAC key a ``whsec_…`` secret stands for.

    The prefix is optional (as in the reference libraries) and missing base64 padding is tolerated,
    because secrets get copy-pasted through config systems that strip ``=``.
    """
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    raw = raw.strip()
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidSecret("webhook secret is not valid base64 after 'whsec_'") from e
    if not key:
        raise InvalidSecret("webhook secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` for message ``msg_id`` at ``timestamp``."""
    if "." in msg_id:
        # The signed string is dot-separated; a dot in the id would make it ambiguous.
        raise ValueError("message id may not contain '.'")
    to_sign = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(decode_secret(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated, no duplicates."""
    if not secrets:
        raise InvalidSecret("no webhook secret to sign with")
    sigs: list[str] = []
    for s in secrets:
        sig = sign(s, msg_id, timestamp, body)
        if sig not in sigs:
            sigs.append(sig)
    return " ".join(sigs)


def rfc3339(t: datetime) -> str:
    """UTC, RFC 3339 with microseconds and a ``Z``, as everywhere else in the API."""
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def encode_body(event_type: str, occurred_at: datetime, data: Mapping[str, Any]) -> bytes:
    """The request body ``{"type", "timestamp", "data"}`` as compact UTF-8 JSON.

    ``timestamp`` is when the event happened (the message's creation), not when this attempt is
    made, so the body is byte-identical on every retry; the attempt time is in the header.
    """
    doc = {"type": event_type, "timestamp": rfc3339(occurred_at), "data": data}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()


def _json_default(o: object) -> Any:
    if isinstance(o, datetime):
        return rfc3339(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def build_headers(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """All headers of one attempt: the three Standard Webhooks ones plus content type."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
    }

