"""open_media for data: URIs and file:// (local mode)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from storage import (
    MediaNotFound,
    MediaTooLarge,
    MediaUnreadable,
    StorageConfig,
    UnsupportedMedia,
    UrlNotAllowed,
    open_media,
)


def test_data_uri(png: bytes, mp4: bytes) -> None:
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    with open_media(uri, StorageConfig(), kind="image") as blob:
        assert (blob.read(), blob.mime, blob.content_type) == (png, "image/png", "image/png")
    uri = "data:video/mp4;base64," + base64.b64encode(mp4).decode()
    with open_media(uri, StorageConfig(spool_bytes=100)) as blob:  # spooled like any other body
        assert not blob.in_memory and blob.read() == mp4
    with pytest.raises(MediaTooLarge):
        open_media(uri, StorageConfig(max_data_uri_bytes=len(mp4) - 1))


@pytest.fixture
def local(tmp_path: Path, png: bytes, mp4: bytes) -> StorageConfig:
    root = tmp_path / "media"
    root.mkdir()
    (root / "a.png").write_bytes(png)
    (root / "clip.mp4").write_bytes(mp4)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_bytes(b"just text")
    (root / "dir").mkdir()
    os.mkfifo(root / "pipe")
    (tmp_path / "outside.png").write_bytes(png)
    os.symlink(tmp_path / "outside.png", root / "link.png")
    return StorageConfig(media_root=root, local_files_allowed=True)


def test_local_files_in_place(local: StorageConfig, png: bytes, mp4: bytes) -> None:
    root = local.media_root
    with open_media(f"file://{root}/a.png", local, kind="image") as blob:
        assert blob.read() == png and blob.size == len(png)
    with open_media(f"file://{root}/clip.mp4", local) as blob, blob.as_path() as p:
        assert p == (root / "clip.mp4").resolve()  # no copy
    assert (root / "clip.mp4").exists()  # closing does not delete the user's file


@pytest.mark.parametrize(
    ("name", "error", "fragment"),
    [
        ("missing.png", MediaNotFound, "no such file"),
        ("empty.png", MediaUnreadable, "empty"),
        ("notes.txt", UnsupportedMedia, "not a recognised"),
        ("dir", MediaUnreadable, "not a regular file"),
        ("pipe", MediaUnreadable, "not a regular file"),
        ("link.png", UrlNotAllowed, "symlink"),
    ],
)
def test_local_failures(local: StorageConfig, name: str, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        open_media(f"file://{local.media_root}/{name}", local)


def test_local_size_cap(local: StorageConfig, png: bytes) -> None:
    from dataclasses import replace

    with pytest.raises(MediaTooLarge):
        open_media(f"file://{local.media_root}/a.png", replace(local, max_bytes=len(png) - 1))
