"""Sniffing real files made by Pillow and PyAV, and the settings bridge."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import StorageConfig, sniff
from tests.storage import media


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("GIF", "image/gif"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_images(fmt: str, mime: str) -> None:
    found = sniff(media.image_bytes(fmt)[:64])
    assert (found.kind, found.mime) == ("image", mime)


@pytest.mark.parametrize(
    ("container", "codec", "mime"),
    [
        ("mp4", "mpeg4", "video/mp4"),
        ("mp4", "libx264", "video/mp4"),
        ("mov", "mpeg4", "video/quicktime"),
        ("webm", "libvpx", "video/webm"),
        ("matroska", "mpeg4", "video/x-matroska"),
        ("avi", "mpeg4", "video/x-msvideo"),
    ],
)
def test_videos(container: str, codec: str, mime: str) -> None:
    found = sniff(media.video_bytes(container, codec)[:64])
    assert (found.kind, found.mime) == ("video", mime)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"BM not a bitmap at all....",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
        b"%PDF-1.7\n",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00",
        b"GIF90a",
        b"\x89PNG\r\n",
    ],
)
def test_unknown(data: bytes) -> None:
    assert sniff(data).kind is None


def test_from_settings() -> None:
    from core.settings import Settings

    s = Settings(
        s3_endpoint_url="http://127.0.0.1:18333",
        s3_allowed_buckets="a-bucket, b-bucket",
        media_root=Path("/srv/media"),
        allow_private_urls=True,
        local_mode=True,
        max_media_bytes=1234,
        max_data_uri_bytes=99,
        fetch_timeout_seconds=5,
    )
    cfg = StorageConfig.from_settings(s, retries=1)
    assert cfg.allowed_buckets == ("a-bucket", "b-bucket")
    assert (cfg.s3_endpoint_url, cfg.media_root, cfg.allow_private_urls, cfg.local_files_allowed) == (
        "http://127.0.0.1:18333",
        Path("/srv/media"),
        True,
        True,
    )
    assert (cfg.max_bytes, cfg.max_data_uri_bytes, cfg.read_timeout, cfg.connect_timeout, cfg.retries) == (
        1234,
        99,
        5.0,
        5.0,
        1,
    )
    hash(cfg)  # frozen and hashable (used as a cache key)

    class Partial:  # duck typing: anything with (some of) the attribute names
        media_root = "/x"

    assert StorageConfig.from_settings(Partial()).media_root == Path("/x")
    with pytest.raises(ValueError, match="5 MiB"):
        StorageConfig(multipart_part_size=1024)
