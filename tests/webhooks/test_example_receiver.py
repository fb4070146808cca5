"""examples/webhook_receiver.py works with what captionq sends: verifies, dedupes, rejects forgeries."""

from __future__ import annotations

import base64
import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from worker.webhooks import signing
from worker.webhooks.sender import send

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webhook_receiver.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("webhook_receiver_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def running() -> Iterator[tuple[str, list[str], list[tuple[str, dict[str, Any]]]]]:
    example = load_example()
    old, new = ("whsec_" + base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    events: list[tuple[str, dict[str, Any]]] = []
    server = example.make_server([new, old], lambda i, e: events.append((i, e)), port=0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/captionq", [new, old], events
    server.shutdown()
    server.server_close()


def _post(url: str, secrets: list[str], msg_id: str) -> int | None:
    body = signing.encode_body("job.succeeded", datetime.now(UTC), {"id": "job_1", "status": "succeeded"})
    headers = signing.build_headers(msg_id, int(time.time()), body, secrets)
    return send(url, body, headers, timeout=5, allow_private=True).status_code


def test_example_verifies_and_dedupes(running: Any) -> None:
    url, (new, old), events = running
    assert _post(url, [new], "msg_a") == 204
    assert _post(url, [old], "msg_b") == 204  # the previous secret still verifies during rotation
    assert _post(url, [new, old], "msg_a") == 200  # a retry of msg_a: acknowledged, not processed
    assert [i for i, _ in events] == ["msg_a", "msg_b"]
    assert events[0][1]["data"]["id"] == "job_1"


def test_example_rejects_forgeries(running: Any) -> None:
    url, _, events = running
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    assert _post(url, [other], "msg_x") == 401
    assert events == []
