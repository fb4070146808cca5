"""Line splitting (pure) and local-mode objects (file://)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from storage import (
    InvalidManifest,
    MediaNotFound,
    StorageConfig,
    UrlNotAllowed,
    iter_lines,
    put_object,
    split_lines,
)


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for n in sizes:
        out.append(data[i : i + n])
        i += n
    out.append(data[i:])
    return [c for c in out if c]


def test_lines_every_split() -> None:
    data = b'\xef\xbb\xbf{"a":1}\r\n\r\n{"b":2}\n{"c":3}\r\nlast'
    expected = [(1, b'{"a":1}'), (2, b""), (3, b'{"b":2}'), (4, b'{"c":3}'), (5, b"last")]
    for i in range(len(data) + 1):  # every two-way split, including a CR/LF pair torn apart
        assert list(split_lines(cut(data, [i]), 100)) == expected
    assert list(split_lines([bytes([b]) for b in data], 100)) == expected  # one byte at a time


def test_lines_random_chunkings() -> None:
    rng = random.Random(7)
    lines = [bytes(rng.choice(b'abc{}":,') for _ in range(rng.randint(0, 40))) for _ in range(500)]
    data = b"".join(line + (b"\r\n" if i % 3 == 0 else b"\n") for i, line in enumerate(lines))
    for _ in range(20):
        sizes = [rng.randint(1, 300) for _ in range(200)]
        assert [line for _, line in split_lines(cut(data, sizes), 1000)] == lines


def test_trailing_newline_does_not_add_a_line() -> None:
    assert list(split_lines([b"a\nb\n"], 10)) == [(1, b"a"), (2, b"b")]
    assert list(split_lines([b"a\nb"], 10)) == [(1, b"a"), (2, b"b")]
    assert list(split_lines([], 10)) == []
    assert list(split_lines([b"\n"], 10)) == [(1, b"")]


def test_line_cap() -> None:
    assert list(split_lines([b"12345\r\n"], 5)) == [(1, b"12345")]  # CR is not counted
    with pytest.raises(InvalidManifest) as e:
        list(split_lines([b"ok\n123456\n"], 5))
    assert e.value.line == 2

    def endless():  # type: ignore[no-untyped-def]
        yield b"ok\n"
        while True:
            yield b"x" * 1000

    # a line that never ends is refused as soon as it passes the cap, not at end of stream
    with pytest.raises(InvalidManifest, match="line 2 is longer than 10000"):
        list(split_lines(endless(), 10_000))


@pytest.fixture
def local(tmp_path: Path) -> StorageConfig:
    (tmp_path / "media").mkdir()
    return StorageConfig(media_root=tmp_path / "media", local_files_allowed=True)


def test_local_put_and_read(local: StorageConfig) -> None:
    root = local.media_root
    stored = put_object(
        f"file://{root}/out/batch 1/results.jsonl",
        iter([b'{"a":1}\n', b'{"b":2}']),
        "application/x-ndjson",
        local,
    )
    target = root / "out" / "batch 1" / "results.jsonl"
    assert stored.size == 15 and target.read_bytes() == b'{"a":1}\n{"b":2}'
    assert [p.name for p in target.parent.iterdir()] == ["results.jsonl"]  # no temp file left
    assert list(iter_lines(f"file://{root}/out/batch%201/results.jsonl", local)) == [
        (1, b'{"a":1}'),
        (2, b'{"b":2}'),
    ]
    put_object(f"file://{target}", b"replaced\n", "text/plain", local)
    assert target.read_bytes() == b"replaced\n"


def test_local_failed_write_keeps_old_content(local: StorageConfig) -> None:
    target = local.media_root / "r.jsonl"
    target.write_bytes(b"old\n")

    def broken():  # type: ignore[no-untyped-def]
        yield b"new"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        put_object(f"file://{target}", broken(), "text/plain", local)
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in local.media_root.iterdir()] == ["r.jsonl"]


def test_local_refusals(local: StorageConfig, tmp_path: Path) -> None:
    with pytest.raises(UrlNotAllowed, match="outside the media root"):
        put_object(f"file://{tmp_path}/elsewhere.json", b"{}", "application/json", local)
    with pytest.raises(UrlNotAllowed, match="local mode"):
        put_object(f"file://{local.media_root}/x.json", b"{}", "application/json", StorageConfig())
    with pytest.raises(MediaNotFound):
        list(iter_lines(f"file://{local.media_root}/none.jsonl", local))
