"""WebDataset shards: an uncompressed tar read once, front to back, grouped into samples.

A sample is the run of consecutive members that share a key (the member name up to the first
``.`` of its last path segment: ``0001/cat.jpg`` and ``0001/cat.json`` are sample ``0001/cat``).
Media members are not read: a sample carries the member's byte offset and length inside the
shard, which is all a worker needs to fetch just those bytes later (``open_media(byte_range=…)``).
Small text members (``.json``, ``.txt``, ``.cls`` …) are read and travel with the sample.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from storage.config import StorageConfig
from storage.errors import MediaUnreadable
from storage.s3 import S3_ERRORS, map_boto_error, s3_client
from storage.urls import FileUrl, parse_object_url

TEXT_MEMBER_MAX = 64 * 1024


@dataclass
class Member:
    name: str
    offset: int  # of the member's data in the shard
    size: int


@dataclass
class Sample:
    key: str
    media: dict[str, Member] = field(default_factory=dict)  # by extension (lower case)
    texts: dict[str, str] = field(default_factory=dict)  # by extension


def sample_key(name: str) -> tuple[str, str]:
    """``dir/abc.seg.jpg`` → (``dir/abc``, ``seg.jpg``)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


def iter_samples(url: str, config: StorageConfig, media_exts: frozenset[str],
                 text_exts: frozenset[str]) -> Iterator[Sample]:
    """The samples of the shard at ``url`` (``s3://`` or ``file://``), in shard order."""
    parsed = parse_object_url(url, config)
    stream: IO[bytes] | Any
    if isinstance(parsed, FileUrl):
        stream = open(parsed.path, "rb")  # noqa: SIM115 (closed below)
    else:
        try:
            stream = s3_client(config).get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"]
        except S3_ERRORS as e:
            raise map_boto_error(e, parsed.url, "GET") from e
    try:
        yield from _samples(stream, parsed.url, media_exts, text_exts)
    finally:
        stream.close()


def _samples(stream: Any, url: str, media_exts: frozenset[str],
             text_exts: frozenset[str]) -> Iterator[Sample]:
    current: Sample | None = None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 (a stream: read once, closed below)
    except tarfile.TarError as e:
        raise MediaUnreadable(f"{url}: not a tar file ({e})") from None
    with tar:
        try:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = sample_key(info.name)
                if current is None or key != current.key:
                    if current is not None and current.media:
                        yield current
                    current = Sample(key)
                last = ext.rpartition(".")[2]
                if last in media_exts:
                    current.media[ext] = Member(info.name, info.offset_data, info.size)
                elif last in text_exts and info.size <= TEXT_MEMBER_MAX:
                    f = tar.extractfile(info)
                    if f is not None:
                        current.texts[ext] = f.read().decode("utf-8", "replace")
        except tarfile.TarError as e:
            raise MediaUnreadable(f"{url}: broken tar ({e})") from None
    if current is not None and current.media:
        yield current


__all__ = ["Member", "Sample", "iter_samples", "sample_key"]
