"""http(s) fetches and guarded requests against real local servers on 127.0.0.1."""

from __future__ import annotations

import ssl
import time
from ipaddress import ip_address
from pathlib import Path

import httpx
import pytest

from storage import (
    MediaNotFound,
    MediaTooLarge,
    MediaUnreadable,
    TransientError,
    UnsupportedMedia,
    UrlNotAllowed,
    guarded_client,
    open_media,
    safe_request,
)
from tests.storage.conftest import fast
from tests.storage.servers import RunningServer, ServerState, make_ca_and_cert, start_http

PRIVATE = fast(allow_private_urls=True)


def test_refused_by_default(http_server: RunningServer) -> None:
    for url in (
        http_server.url("/img.png"),
        f"http://localhost:{http_server.port}/img.png",
        f"http://2130706433:{http_server.port}/img.png",
    ):
        with pytest.raises(UrlNotAllowed) as e:
            open_media(url, fast())
        assert e.value.code == "url_not_allowed"
    assert http_server.state.hits["/img.png"] == 0  # refused before any connection


def test_transport_itself_refuses(http_server: RunningServer) -> None:
    """The connection layer checks too, even when a caller skips URL validation."""
    with guarded_client(allow_private=False) as client, pytest.raises(UrlNotAllowed, match="loopback"):
        client.get(http_server.url("/img.png"))
    with guarded_client(allow_private=True) as client:
        assert client.get(http_server.url("/img.png")).status_code == 200


def test_fetch_image_and_video(http_server: RunningServer, png: bytes, mp4: bytes) -> None:
    with open_media(http_server.url("/img.png"), PRIVATE, kind="image") as blob:
        assert (blob.kind, blob.mime, blob.size, blob.content_type) == (
            "image",
            "image/png",
            len(png),
            "image/png",
        )
        assert blob.read() == png and blob.in_memory
    # the bytes decide, not the Content-Type
    with open_media(http_server.url("/octet.png"), PRIVATE) as blob:
        assert blob.mime == "image/png" and blob.content_type == "application/octet-stream"
    with open_media(http_server.url("/clip.mp4"), PRIVATE, kind="video") as blob:
        assert blob.kind == "video" and blob.read() == mp4
        with blob.as_path() as p:
            assert p.read_bytes() == mp4


def test_large_body_spools_to_disk(http_server: RunningServer, mp4: bytes) -> None:
    cfg = fast(allow_private_urls=True, spool_bytes=256)
    with open_media(http_server.url("/clip.mp4"), cfg) as blob:
        assert not blob.in_memory
        with blob.as_path() as p:
            path = Path(p)
            assert path.read_bytes() == mp4 and path.suffix == ".mp4"
        with blob.open() as f:
            assert f.read() == mp4
    assert not path.exists()  # closed blob: temporary file gone


def test_kind_contradiction_and_unknown_bytes(http_server: RunningServer) -> None:
    with pytest.raises(UnsupportedMedia, match="the item says 'video' but the bytes are image/png"):
        open_media(http_server.url("/img.png"), PRIVATE, kind="video")
    with pytest.raises(UnsupportedMedia, match="not a recognised image or video"):
        open_media(http_server.url("/page.html"), PRIVATE)


@pytest.mark.parametrize(
    ("path", "error", "fragment"),
    [
        ("/missing", MediaNotFound, "404"),
        ("/gone", MediaNotFound, "410"),
        ("/forbidden", MediaNotFound, "403"),
        ("/teapot", MediaUnreadable, "418"),
    ],
)
def test_status_mapping(http_server: RunningServer, path: str, error: type, fragment: str) -> None:
    before = http_server.state.hits[path]
    with pytest.raises(error, match=fragment) as e:
        open_media(http_server.url(path), PRIVATE)
    assert not e.value.retryable
    assert http_server.state.hits[path] - before == 1  # permanent: not retried


def test_500_then_200_is_retried(http_server: RunningServer, png: bytes) -> None:
    with open_media(http_server.url("/flaky/a"), PRIVATE) as blob:
        assert blob.read() == png
    assert http_server.state.hits["/flaky/a"] == 2


def test_persistent_5xx_is_transient(http_server: RunningServer) -> None:
    with pytest.raises(TransientError, match="3 attempts") as e:
        open_media(http_server.url("/busy"), PRIVATE)
    assert e.value.retryable and e.value.code == "transient"
    assert http_server.state.hits["/busy"] == 3


def test_slow_server_times_out(http_server: RunningServer) -> None:
    cfg = fast(allow_private_urls=True, read_timeout=0.3, retries=1)
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="timed out") as e:
        open_media(http_server.url("/slow?s=2"), cfg)
    assert e.value.retryable
    assert time.monotonic() - t0 < 1.8


def test_slow_drip_hits_the_deadline(http_server: RunningServer) -> None:
    cfg = fast(allow_private_urls=True, total_timeout=0.4, retries=0)
    with pytest.raises(TransientError, match="longer than the time allowed"):
        open_media(http_server.url("/drip"), cfg)


def test_oversize_bodies(http_server: RunningServer) -> None:
    cfg = fast(allow_private_urls=True, max_bytes=1_000_000)
    with pytest.raises(MediaTooLarge, match="1000000000 bytes"):  # declared length: refused before reading
        open_media(http_server.url("/big-declared"), cfg)
    with pytest.raises(MediaTooLarge, match="larger than the limit"):  # chunked: cut off while streaming
        open_media(http_server.url("/big-chunked"), cfg)


def test_redirects_are_followed_and_rechecked(http_server: RunningServer, png: bytes) -> None:
    with open_media(http_server.url("/chain/3"), PRIVATE) as blob:
        assert blob.read() == png
    with pytest.raises(MediaUnreadable, match="more than 5 redirects"):
        open_media(http_server.url("/chain/9"), PRIVATE)
    for target, fragment in [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://metadata.google.internal/", "cloud metadata"),
        ("file:///etc/passwd", "expected an https:// or http:// URL"),
        ("http://user:pw@127.0.0.1/", "credentials"),
    ]:
        with pytest.raises(UrlNotAllowed, match=fragment) as e:
            open_media(http_server.url(f"/redirect?to={target}"), PRIVATE)
        assert "redirect from" in e.value.message
    # without allow_private the same hop into loopback space would be refused
    with pytest.raises(UrlNotAllowed):
        open_media(http_server.url("/chain/1"), fast())


def test_pinned_connection_keeps_the_host_name(http_server: RunningServer) -> None:
    """The name is resolved once, by us; the connection goes to that address and the request
    still says ``Host: <name>``."""
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list:  # type: ignore[type-arg]
        lookups.append(host)
        return [ip_address("127.0.0.1")]

    with open_media(f"http://media.example.test:{http_server.port}/img.png", PRIVATE, resolver=resolver):
        pass
    assert lookups == ["media.example.test"]
    assert http_server.state.hosts[-1] == f"media.example.test:{http_server.port}"
    # and a refused answer means no connection at all
    before = sum(http_server.state.hits.values())
    with pytest.raises(UrlNotAllowed, match=r"resolves to 127\.0\.0\.1"):
        open_media(f"http://media.example.test:{http_server.port}/img.png", fast(), resolver=resolver)
    assert sum(http_server.state.hits.values()) == before


def test_https_sni_and_verification_use_the_name(tmp_path: Path, png: bytes) -> None:
    ca, server_ctx = make_ca_and_cert(tmp_path, ["localhost", "media.example.test"])
    state = ServerState(files={"/img.png": (png, "image/png")})
    srv = start_http(state, tls=server_ctx)
    verify = ssl.create_default_context(cafile=str(ca))
    try:
        # real DNS for localhost (may answer ::1 first: the server only listens on 127.0.0.1)
        with open_media(f"https://localhost:{srv.port}/img.png", PRIVATE, verify=verify) as blob:
            assert blob.read() == png
        assert state.sni[-1] == "localhost"
        pinned = open_media(
            f"https://media.example.test:{srv.port}/img.png",
            PRIVATE,
            verify=verify,
            resolver=lambda h, p: [ip_address("127.0.0.1")],
        )
        pinned.close()
        assert state.sni[-1] == "media.example.test"
        # the certificate names no IP address: connecting by IP must fail verification
        with pytest.raises(TransientError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            open_media(
                f"https://127.0.0.1:{srv.port}/img.png",
                fast(allow_private_urls=True, retries=0),
                verify=verify,
            )
    finally:
        srv.server.shutdown()
        srv.server.server_close()


def test_safe_request_for_webhooks(http_server: RunningServer) -> None:
    r = safe_request(
        "POST",
        http_server.url("/hook"),
        content=b"{}",
        allow_private=True,
        headers={"content-type": "application/json"},
    )
    assert (r.status_code, r.content, r.truncated) == (200, b"got {}", False)
    # no redirects by default: the 307 is the answer
    r = safe_request("POST", http_server.url("/hook-redirect"), content=b"{}", allow_private=True)
    assert r.status_code == 307 and http_server.state.hits["/hook"] == 1
    with pytest.raises(UrlNotAllowed):
        safe_request("POST", http_server.url("/hook"), content=b"{}")
    r = safe_request(
        "GET", http_server.url("/big-chunked"), allow_private=True, max_bytes=1000, truncate=True
    )
    assert r.truncated and len(r.content) == 1000
    with pytest.raises(MediaTooLarge):
        safe_request("GET", http_server.url("/big-chunked"), allow_private=True, max_bytes=1000)
    with pytest.raises(TransientError, match="timed out"):
        safe_request("GET", http_server.url("/slow?s=1"), allow_private=True, timeout=0.2)


def test_env_proxies_are_ignored(http_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would fail if used
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    assert safe_request("GET", http_server.url("/host"), allow_private=True).status_code == 200
    assert isinstance(guarded_client(allow_private=True), httpx.Client)
