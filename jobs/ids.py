"""Prefixed, time-ordered ids: ``job_…``, ``bat_…``, ``msg_…``, ``ten_…``.

The body is a ULID-style 26-character Crockford base32 string: 48 bits of milliseconds, then
80 bits that are random for the first id of a millisecond and incremented after that, so ids made
by one process sort in creation order and newest-first listings are stable.
"""

from __future__ import annotations

import base64
import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = -1
_last_rand = 0
_RAND_MAX = (1 << 80) - 1


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


# base64's base32 alphabet → Crockford's, lower case (ids are shown lower case)
_B32_TO_ID = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.lower().encode())


def _encode26(value: int) -> str:
    """``_encode(value, 26).lower()`` for a 128-bit value, in C: the 130 bits the 26 characters
    hold, left-aligned in 17 bytes, through base64's base32 (a batch makes millions of ids)."""
    return base64.b32encode((value << 6).to_bytes(17, "big"))[:26].translate(_B32_TO_ID).decode()


def _next() -> int:
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand += 1
            if _last_rand > _RAND_MAX:  # 2**80 ids in one ms: borrow the next ms
                ms += 1
                _last_rand = int.from_bytes(os.urandom(10), "big") >> 1
        else:
            # Keep the top bit clear so increments within the millisecond never overflow.
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1
        _last_ms = ms
        return (ms << 80) | _last_rand


def new_id(prefix: str) -> str:
    return f"{prefix}_{_encode26(_next())}"


def new_ids(prefix: str, n: int) -> list[str]:
    return [new_id(prefix) for _ in range(n)]


def job_id() -> str:
    return new_id("job")


def batch_id() -> str:
    return new_id("bat")


def message_id() -> str:
    return new_id("msg")


def tenant_id() -> str:
    return new_id("ten")


_BODY_CHARS = frozenset(_ALPHABET.lower())
_FIRST_CHARS = frozenset("01234567")  # 128 bits in 26 characters: the first holds only 3 of 5 bits


def is_valid(prefix: str, value: str) -> bool:
    """Whether ``value`` has the form of an id :func:`new_id` makes with ``prefix``: a value that
    does not cannot name any row, and is answered without a query."""
    body = value[len(prefix) + 1:]
    return (value.startswith(prefix + "_") and len(body) == 26 and body[0] in _FIRST_CHARS
            and all(c in _BODY_CHARS for c in body))
