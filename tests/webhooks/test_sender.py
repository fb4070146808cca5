"""One attempt against a real receiver on 127.0.0.1 (verified with ``standardwebhooks``)."""

from __future__ import annotations

import base64
import os
import socket
import time
from datetime import UTC, datetime

import pytest

from worker.webhooks import signing
from worker.webhooks.sender import send

from .receiver import Answer, Receiver


@pytest.fixture
def secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _signed(secret: str, msg_id: str = "msg_test1") -> tuple[bytes, dict[str, str]]:
    body = signing.encode_body("job.succeeded", datetime.now(UTC), {"id": "job_1", "object": "job"})
    return body, signing.build_headers(msg_id, int(time.time()), body, [secret])


def test_success_is_verified_by_reference_library(secret: str) -> None:
    with Receiver([secret]) as rx:
        body, headers = _signed(secret)
        result = send(rx.url, body, headers, timeout=5, allow_private=True)
    assert result.ok and result.status_code == 200 and result.error is None
    assert result.duration_seconds < 5
    (got,) = rx.received
    assert got.verified_with == [0]
    assert got.msg_id == "msg_test1"
    assert got.payload["data"] == {"id": "job_1", "object": "job"}


def test_non_2xx_is_a_failure_with_status_and_retry_after(secret: str) -> None:
    with Receiver([secret], default=Answer(503, headers=(("Retry-After", "7"),), body=b"busy")) as rx:
        body, headers = _signed(secret)
        result = send(rx.url, body, headers, timeout=5, allow_private=True)
    assert not result.ok
    assert result.status_code == 503
    assert result.error == "HTTP 503: busy"
    assert result.retry_after == "7"


def test_redirect_is_not_followed(secret: str) -> None:
    with Receiver([secret]) as target, Receiver(
        [secret], default=Answer(307, headers=(("Location", "PLACEHOLDER"),))
    ) as redirector:
        redirector.default = Answer(307, headers=(("Location", target.url),))
        body, headers = _signed(secret)
        result = send(redirector.url, body, headers, timeout=5, allow_private=True)
    assert not result.ok and result.status_code == 307
    assert result.error is not None and "redirect not followed" in result.error
    assert target.received == []
    assert len(redirector.received) == 1


def test_slow_receiver_is_timed_out(secret: str) -> None:
    with Receiver([secret], default=Answer(200, delay=2.0)) as rx:
        body, headers = _signed(secret)
        t0 = time.monotonic()
        result = send(rx.url, body, headers, timeout=0.5, allow_private=True)
        elapsed = time.monotonic() - t0
    assert not result.ok and result.status_code is None
    assert result.error is not None and result.error.startswith("timeout")
    assert elapsed < 1.5


def test_dripping_receiver_is_cut_at_the_deadline(secret: str) -> None:
    """A server that sends its answer one byte at a time never trips a per-read timeout; the
    attempt's wall-clock budget still ends it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    import threading

    def drip() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        try:
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
                conn.sendall(bytes([b]))
                time.sleep(0.1)
        except OSError:
            pass
        conn.close()

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    body, headers = _signed(secret)
    t0 = time.monotonic()
    result = send(f"http://127.0.0.1:{port}/", body, headers, timeout=0.8, allow_private=True)
    assert time.monotonic() - t0 < 1.5
    assert result.error is not None and result.error.startswith("timeout")
    srv.close()


def test_connection_refused(secret: str) -> None:
    rx = Receiver([secret]).start()
    url = rx.url
    rx.stop()
    body, headers = _signed(secret)
    result = send(url, body, headers, timeout=2, allow_private=True)
    assert not result.ok and result.status_code is None
    assert result.error is not None and result.error.startswith("connection failed")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "10.0.0.7", "169.254.169.254", "0x7f.1"])
def test_private_addresses_refused_without_the_setting(secret: str, host: str) -> None:
    with Receiver([secret]) as rx:
        body, headers = _signed(secret)
        result = send(f"http://{host}:{rx.port}/hooks", body, headers, timeout=2, allow_private=False)
    assert not result.ok and result.status_code is None
    assert result.error is not None and result.error.startswith("url_not_allowed")
    assert rx.received == []


def test_name_resolving_to_private_address_refused_at_send_time(secret: str) -> None:
    """The check happens on every attempt, against what the name resolves to *now*."""
    import ipaddress

    with Receiver([secret]) as rx:
        body, headers = _signed(secret)
        url = f"http://hooks.example.com:{rx.port}/hooks"
        public = send(url, body, headers, timeout=2, allow_private=False,
                      resolver=lambda h, p: [ipaddress.ip_address("127.0.0.1")])
        assert public.error is not None and "resolves to 127.0.0.1" in public.error
        # With private addresses allowed, the connection goes to the checked address even though
        # the name itself does not exist anywhere.
        allowed = send(url, body, headers, timeout=2, allow_private=True,
                       resolver=lambda h, p: [ipaddress.ip_address("127.0.0.1")])
        assert allowed.ok, allowed.error
    (got,) = rx.received
    assert got.verified_with == [0]


def test_metadata_address_refused_even_when_private_allowed(secret: str) -> None:
    body, headers = _signed(secret)
    result = send("http://169.254.169.254/latest", body, headers, timeout=2, allow_private=True)
    assert result.error is not None and result.error.startswith("url_not_allowed")
