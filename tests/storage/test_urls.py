"""URL validation at the door: s3, http(s) syntax, data: URIs, file:// under the media root."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from storage import (
    DataUrl,
    FileUrl,
    MediaTooLarge,
    S3Url,
    StorageConfig,
    UnsupportedMedia,
    UrlNotAllowed,
    parse_media_url,
    parse_object_url,
)
from storage.urls import parse_data_url

CFG = StorageConfig()


# --- s3 ------------------------------------------------------------------------------------------
def test_s3_key_is_literal() -> None:
    u = parse_media_url("s3://my.bucket-1/photos/a b%20?x#y.jpg", CFG)
    assert isinstance(u, S3Url)
    assert (u.bucket, u.key) == ("my.bucket-1", "photos/a b%20?x#y.jpg")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("s3://ab/x", "invalid S3 bucket name"),
        ("s3://" + "a" * 64 + "/x", "invalid S3 bucket name"),
        ("s3://Upper/x", "invalid S3 bucket name"),
        ("s3://under_score/x", "invalid S3 bucket name"),
        ("s3://-dash/x", "invalid S3 bucket name"),
        ("s3://a..b/x", "adjacent"),
        ("s3://192.168.1.1/x", "IP address"),
        ("s3://xn--bucket/x", "reserved prefix"),
        ("s3://bucket-s3alias/x", "reserved prefix or suffix"),
        ("s3://bucket", "names no object"),
        ("s3://bucket/", "names no object"),
        ("s3://bucket/" + "k" * 1025, "longer than 1024"),
        ("s3://bucket/a\x01b", "control"),
        ("s3:/bucket/x", "not an s3:// URL"),
    ],
)
def test_s3_refusals(url: str, fragment: str) -> None:
    with pytest.raises(UrlNotAllowed, match=fragment):
        parse_media_url(url, CFG)


def test_allowed_buckets() -> None:
    cfg = StorageConfig(allowed_buckets=("media-in", "media-out"))
    assert parse_media_url("s3://media-in/a.png", cfg).url == "s3://media-in/a.png"  # type: ignore[union-attr]
    with pytest.raises(UrlNotAllowed, match="not one of the allowed buckets"):
        parse_media_url("s3://other-bucket/a.png", cfg)


def test_output_prefix() -> None:
    assert parse_object_url("s3://out-bucket/run/7", CFG, prefix=True).url == "s3://out-bucket/run/7/"
    assert parse_object_url("s3://out-bucket", CFG, prefix=True).url == "s3://out-bucket/"


# --- http(s) syntax ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://user:pw@example.com/a.png", "credentials"),
        ("https://user@example.com/a.png", "credentials"),
        ("https://example.com:0/", "port 0|invalid port"),
        ("https://example.com:65536/", "invalid port"),
        ("https://example.com:-1/", "invalid port"),
        ("https://example.com:8o/", "invalid port"),
        ("https://example.com:/", "invalid port|empty port"),
        ("https:///a.png", "no host"),
        ("https:example.com/a.png", "no host"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com\\@evil.test/", "backslash"),
        ("https://[::1/", "IPv6|malformed"),
        ("https://[fe80::1%25eth0]/", "zone"),
        ("https://ex%61mple.com/", "invalid host name"),
        ("https://-bad-.example/", "invalid host name"),
        ("ftp://example.com/a.png", "unsupported URL scheme 'ftp'"),
        ("javascript:alert(1)", "unsupported URL scheme"),
        ("//example.com/a.png", "unsupported URL scheme none"),
        (" https://example.com/a.png", "whitespace"),
        ("https://example.com/" + "a" * 9000, "longer than"),
    ],
)
def test_http_refusals(url: str, fragment: str) -> None:
    with pytest.raises(UrlNotAllowed, match=fragment):
        parse_media_url(url, CFG)


def test_http_normalisation() -> None:
    u = parse_media_url("HTTPS://Example.COM.:443/a/b.png?x=1#frag", CFG)
    assert u.url == "https://example.com/a/b.png?x=1"
    assert parse_media_url("http://example.com:8080", CFG).url == "http://example.com:8080/"
    assert parse_media_url("https://bücher.example/x", CFG).url == "https://xn--bcher-kva.example/x"
    private = StorageConfig(allow_private_urls=True)
    assert parse_media_url("http://0x7f000001:9000/x", private).url == "http://127.0.0.1:9000/x"
    assert parse_media_url("http://[::FFFF:127.0.0.1]/", private).url == "http://[::ffff:7f00:1]/"


# --- data: -----------------------------------------------------------------------------------------
def data_uri(mime: str, raw: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def test_data_uri_ok(png: bytes, mp4: bytes) -> None:
    u = parse_media_url(data_uri("image/png", png), CFG, kind="image")
    assert isinstance(u, DataUrl)
    assert (u.mime, u.kind, u.size) == ("image/png", "image", len(png))
    assert u.decode() == png
    v = parse_media_url(data_uri("video/mp4", mp4), CFG, kind="video")
    assert isinstance(v, DataUrl) and v.size == len(mp4)
    # a declared subtype that differs within the same kind is fine (the bytes decide the decoder)
    assert parse_media_url(data_uri("image/jpeg", png), CFG).kind == "image"  # type: ignore[union-attr]
    assert parse_media_url(data_uri("image/png;name=a.png", png), CFG).size == len(png)  # type: ignore[union-attr]


@pytest.mark.parametrize("n", range(1, 8))
def test_data_uri_size_from_length(n: int, png: bytes) -> None:
    raw = png + b"\0" * n
    assert parse_data_url(data_uri("image/png", raw), max_bytes=10**6).size == len(raw)


def test_data_uri_size_cap_is_checked_before_decoding(png: bytes) -> None:
    raw = png + b"\0" * 4000
    uri = data_uri("image/png", raw)
    assert parse_data_url(uri, max_bytes=len(raw)).size == len(raw)
    with pytest.raises(MediaTooLarge) as e:
        parse_data_url(uri, max_bytes=len(raw) - 1)
    assert e.value.code == "media_too_large"
    # An oversized payload that is not even valid base64 is refused for size, without a scan.
    junk = "data:image/png;base64," + "!" * (4 * 1024 * 1024)
    with pytest.raises(MediaTooLarge):
        parse_data_url(junk, max_bytes=1024)


@pytest.mark.parametrize(
    ("make", "error", "fragment"),
    [
        (lambda p: "data:image/png," + base64.b64encode(p).decode(), UrlNotAllowed, "';base64,' missing"),
        (lambda p: "data:;base64," + base64.b64encode(p).decode(), UrlNotAllowed, "no media type"),
        (lambda p: "data:image/png;base64", UrlNotAllowed, "no ','"),
        (lambda p: "data:image/png;base64,", UrlNotAllowed, "empty payload"),
        (lambda p: data_uri("image/png", p)[:-1], UrlNotAllowed, "multiple of 4"),
        (lambda p: data_uri("image/png", p).rstrip("="), UrlNotAllowed, "multiple of 4"),
        (
            lambda p: data_uri("image/png", p)[:40] + " " + data_uri("image/png", p)[41:],
            UrlNotAllowed,
            "offset",
        ),
        (
            lambda p: data_uri("image/png", p)[:40] + "-" + data_uri("image/png", p)[41:],
            UrlNotAllowed,
            "URL-safe",
        ),
        (
            lambda p: data_uri("image/png", p)[:40] + "=" + data_uri("image/png", p)[41:],
            UrlNotAllowed,
            "invalid base64",
        ),
        (lambda p: "data:image/png;base64,QR==", UrlNotAllowed, "non-zero bits"),
        (lambda p: data_uri("text/plain", p), UnsupportedMedia, "not image/\\* or video/\\*"),
        (lambda p: data_uri("application/octet-stream", p), UnsupportedMedia, "not image"),
        (
            lambda p: data_uri("image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
            UnsupportedMedia,
            "not a recognised",
        ),
        (lambda p: data_uri("video/mp4", p), UnsupportedMedia, "its bytes are image/png"),
        (lambda p: data_uri("image/png", b"hello world, not an image"), UnsupportedMedia, "not a recognised"),
        (lambda p: data_uri("image png", p), UrlNotAllowed, "malformed media type"),
        (
            lambda p: "data:image/png;x;base64," + base64.b64encode(p).decode(),
            UrlNotAllowed,
            "malformed parameter",
        ),
    ],
)
def test_data_uri_refusals(make, error, fragment, png: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=fragment):
        parse_media_url(make(png), CFG)


def test_data_uri_kind_contradiction(png: bytes) -> None:
    with pytest.raises(UnsupportedMedia, match="item type is 'video'"):
        parse_media_url(data_uri("image/png", png), CFG, kind="video")


# --- file:// -----------------------------------------------------------------------------------------
@pytest.fixture
def media_tree(tmp_path: Path, png: bytes) -> tuple[StorageConfig, Path]:
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(png)
    (root / "sp ace?.png").write_bytes(png)
    outside = tmp_path / "secret.png"
    outside.write_bytes(png)
    os.symlink(outside, root / "escape.png")
    os.symlink(tmp_path, root / "escape-dir")
    os.symlink(root / "sub" / "a.png", root / "inside-link.png")
    return StorageConfig(media_root=root, local_files_allowed=True), root


def test_file_urls_inside_root(media_tree: tuple[StorageConfig, Path]) -> None:
    cfg, root = media_tree
    u = parse_media_url(f"file://{root}/sub/a.png", cfg)
    assert isinstance(u, FileUrl) and u.path == (root / "sub" / "a.png").resolve()
    assert parse_media_url(f"file://localhost{root}/sub/a.png", cfg).path == u.path  # type: ignore[union-attr]
    assert parse_media_url(f"file:{root}/sub/a.png", cfg).path == u.path  # type: ignore[union-attr]
    assert parse_media_url(f"file://{root}/sp%20ace%3F.png", cfg).path.name == "sp ace?.png"  # type: ignore[union-attr]
    # a symlink that stays inside the root is fine
    assert parse_media_url(f"file://{root}/inside-link.png", cfg).path == u.path  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("suffix", "fragment"),
    [
        ("/sub/../../secret.png", "'..' segment"),
        ("/sub/%2e%2e/%2E%2E/secret.png", "'..' segment"),
        ("/escape.png", "symlink"),
        ("/escape-dir/secret.png", "symlink"),
        ("/sub/a.png%00.jpg", "NUL"),
        ("/sub/a.png?x=1", "query"),
        ("/sub\\a.png", "backslash"),
    ],
)
def test_file_traversal_attempts(media_tree: tuple[StorageConfig, Path], suffix: str, fragment: str) -> None:
    cfg, root = media_tree
    with pytest.raises(UrlNotAllowed, match=fragment):
        parse_media_url(f"file://{root}{suffix}", cfg)


def test_file_outside_root_and_remote_hosts(media_tree: tuple[StorageConfig, Path]) -> None:
    cfg, root = media_tree
    with pytest.raises(UrlNotAllowed, match="outside the media root"):
        parse_media_url("file:///etc/passwd", cfg)
    with pytest.raises(UrlNotAllowed, match="outside the media root"):
        parse_media_url(f"file://{root}-sibling/a.png", cfg)  # prefix match is not containment
    with pytest.raises(UrlNotAllowed, match="remote host"):
        parse_media_url(f"file://fileserver{root}/sub/a.png", cfg)
    with pytest.raises(UrlNotAllowed, match="absolute"):
        parse_media_url("file:sub/a.png", cfg)


def test_file_urls_need_local_mode(media_tree: tuple[StorageConfig, Path]) -> None:
    _cfg, root = media_tree
    with pytest.raises(UrlNotAllowed, match="only accepted in the local mode"):
        parse_media_url(f"file://{root}/sub/a.png", StorageConfig(media_root=root))
    with pytest.raises(UrlNotAllowed, match=r"accepted: s3://, https://, http://, data:$"):
        parse_media_url("gopher://x/", StorageConfig(media_root=root))
