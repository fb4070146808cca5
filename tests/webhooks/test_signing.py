"""Signing checked against the reference ``standardwebhooks`` library, not against our own code."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from worker.webhooks import signing


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def test_reference_library_verifies_our_signature() -> None:
    secret = new_secret()
    body = signing.encode_body(
        "job.succeeded", datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        {"id": "job_1", "object": "job", "output": {"text": "un café ☕"}},
    )
    now = int(time.time())
    headers = signing.build_headers("msg_abc", now, body, [secret])
    parsed = Webhook(secret).verify(body, headers)
    assert parsed == {"type": "job.succeeded", "timestamp": "2026-01-02T03:04:05.678000Z",
                      "data": {"id": "job_1", "object": "job", "output": {"text": "un café ☕"}}}
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-timestamp"] == str(now)
    assert headers["content-type"] == "application/json"


def test_signature_matches_reference_sign() -> None:
    secret = new_secret()
    body = b'{"type":"job.failed","timestamp":"x","data":{}}'
    ts = 1_700_000_000
    ours = signing.sign(secret, "msg_1", ts, body)
    theirs = Webhook(secret).sign("msg_1", datetime.fromtimestamp(ts, tz=UTC), body.decode())
    assert ours == theirs


def test_wrong_secret_tampered_body_and_stale_timestamp_fail() -> None:
    secret, other = new_secret(), new_secret()
    body = signing.encode_body("job.succeeded", datetime.now(UTC), {"id": "job_1"})
    now = int(time.time())
    headers = signing.build_headers("msg_x", now, body, [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"job_1", b"job_2"), headers)
    old = signing.build_headers("msg_x", now - 3600, body, [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, old)


def test_rotation_sends_two_signatures_either_secret_verifies() -> None:
    old, new = new_secret(), new_secret()
    now_dt = datetime.now(UTC)
    secrets = [new, old]  # what jobs.tenants.signing_secrets gives during the grace period
    body = signing.encode_body("job.canceled", now_dt, {"id": "job_9"})
    headers = signing.build_headers("msg_r", int(now_dt.timestamp()), body, secrets)
    parts = headers["webhook-signature"].split(" ")
    assert len(parts) == 2 and all(p.startswith("v1,") for p in parts)
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_secret_decoding() -> None:
    key = os.urandom(32)
    padded = base64.b64encode(key).decode()
    assert signing.decode_secret("whsec_" + padded) == key
    assert signing.decode_secret("whsec_" + padded.rstrip("=")) == key
    assert signing.decode_secret(padded) == key
    for bad in ("whsec_", "whsec_***", "whsec_a"):
        with pytest.raises(signing.InvalidSecret):
            signing.decode_secret(bad)


def test_body_is_stable_and_compact() -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    data = {"id": "bat_1", "object": "batch", "finished_at": at}
    a = signing.encode_body("batch.completed", at, data)
    b = signing.encode_body("batch.completed", at, data)
    assert a == b
    doc = json.loads(a)
    assert list(doc) == ["type", "timestamp", "data"]
    assert doc["data"]["finished_at"] == "2026-05-01T00:00:00.000000Z"
    assert b" " not in a


def test_dotted_message_id_refused() -> None:
    with pytest.raises(ValueError):
        signing.sign(new_secret(), "msg.1", 1, b"{}")


def test_same_secret_twice_gives_one_signature() -> None:
    s = new_secret()
    assert signing.signature_header([s, s], "msg_1", 1, b"{}") == signing.sign(s, "msg_1", 1, b"{}")
    with pytest.raises(signing.InvalidSecret):
        signing.signature_header([], "msg_1", 1, b"{}")
