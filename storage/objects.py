"""Result objects and manifests: write an object, read a JSONL manifest line by line as a stream.

``put_object`` writes to ``s3://bucket/key`` (one PUT for bytes and small streams, a multipart
upload for streams longer than one part) or, in local mode, ``file://`` under the media root
(written to a temporary file and renamed, so readers never see half an object).

``iter_lines`` never holds more than one chunk plus one line in memory, whatever the manifest's
length. An S3 body that breaks off mid-way is resumed with a Range request (pinned to the first
answer's ETag, so a manifest replaced meanwhile fails instead of mixing two versions).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.config import StorageConfig
from storage.errors import InvalidManifest, MediaNotFound, MediaUnreadable, TransientError, UrlNotAllowed
from storage.retry import backoff_delay, call_with_retries
from storage.s3 import S3_ERRORS, STREAM_ERRORS, map_boto_error, s3_client
from storage.urls import FileUrl, S3Url, parse_object_url

READ_CHUNK = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class StoredObject:
    url: str
    size: int
    parts: int  # 1 for a single PUT or a local file


# --- writing -------------------------------------------------------------------------------------
def put_object(
    url: str, data: bytes | Iterable[bytes], content_type: str, config: StorageConfig
) -> StoredObject:
    """Write ``data`` (bytes, or an iterable of byte chunks of any sizes) to ``url``."""
    parsed = parse_object_url(url, config)
    if isinstance(parsed, FileUrl):
        return _put_file(parsed, data)
    if parsed.key.endswith("/"):
        raise UrlNotAllowed(f"{parsed.url} names a prefix, not an object")
    if isinstance(data, (bytes, bytearray, memoryview)):
        _put_single(parsed, bytes(data), content_type, config)
        return StoredObject(parsed.url, len(data), 1)
    return _put_stream(parsed, data, content_type, config)


def _put_single(u: S3Url, body: bytes, content_type: str, config: StorageConfig) -> None:
    client = s3_client(config)

    def attempt() -> None:
        try:
            client.put_object(Bucket=u.bucket, Key=u.key, Body=body, ContentType=content_type)
        except S3_ERRORS as e:
            raise map_boto_error(e, u.url, "PUT") from e

    call_with_retries(attempt, config, what=u.url)


def _parts(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup arbitrary chunks into parts of exactly ``size`` bytes (the last one shorter)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def _put_stream(u: S3Url, chunks: Iterable[bytes], content_type: str, config: StorageConfig) -> StoredObject:
    parts = _parts(chunks, config.multipart_part_size)
    first = next(parts, b"")
    second = next(parts, None)
    if second is None:  # fits in one part: no multipart ceremony
        _put_single(u, first, content_type, config)
        return StoredObject(u.url, len(first), 1)
    client = s3_client(config)
    try:
        created = client.create_multipart_upload(Bucket=u.bucket, Key=u.key, ContentType=content_type)
        upload_id = created["UploadId"]
    except S3_ERRORS as e:
        raise map_boto_error(e, u.url, "CreateMultipartUpload") from e
    done: list[dict[str, Any]] = []
    size = 0
    try:
        for number, part in enumerate(_chain(first, second, parts), start=1):
            etag = call_with_retries(
                lambda p=part, n=number: _upload_part(client, u, upload_id, n, p), config, what=u.url  # type: ignore[misc]
            )
            done.append({"PartNumber": number, "ETag": etag})
            size += len(part)
        try:
            client.complete_multipart_upload(
                Bucket=u.bucket, Key=u.key, UploadId=upload_id, MultipartUpload={"Parts": done}
            )
        except S3_ERRORS as e:
            raise map_boto_error(e, u.url, "CompleteMultipartUpload") from e
    except BaseException:
        # Leave no orphaned parts behind (they cost money and never expire by themselves).
        with contextlib.suppress(*S3_ERRORS):
            client.abort_multipart_upload(Bucket=u.bucket, Key=u.key, UploadId=upload_id)
        raise
    return StoredObject(u.url, size, len(done))


def _chain(first: bytes, second: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield second
    yield from rest


def _upload_part(client: Any, u: S3Url, upload_id: str, number: int, body: bytes) -> str:
    try:
        resp = client.upload_part(
            Bucket=u.bucket, Key=u.key, UploadId=upload_id, PartNumber=number, Body=body
        )
    except S3_ERRORS as e:
        raise map_boto_error(e, u.url, f"UploadPart {number}") from e
    return str(resp["ETag"])


def _put_file(u: FileUrl, data: bytes | Iterable[bytes]) -> StoredObject:
    path = u.path
    if u.url.endswith("/"):
        raise UrlNotAllowed(f"{u.url} names a folder, not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = [bytes(data)] if isinstance(data, (bytes, bytearray, memoryview)) else data
    size = 0
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            for chunk in chunks:
                tmp.write(chunk)
                size += len(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
    return StoredObject(u.url, size, 1)


def put_many(prefix: str, files: Sequence[tuple[str, bytes, str]], config: StorageConfig,
             pool: Executor | None = None) -> None:
    """Write many small objects ``(relative name, bytes, content type)`` under ``prefix``, made
    durable together. S3: concurrent PUTs on ``pool``. ``file://``: the prefix is checked once
    (not every file: thousands of realpath walks), each file written to a temporary name and
    renamed, then one ``syncfs``. Names must be relative without ``..`` segments."""
    parsed = parse_object_url(prefix, config, prefix=True)
    for name, _, _ in files:
        if name.startswith("/") or ".." in name.split("/") or "\x00" in name:
            raise UrlNotAllowed(f"{name!r} is not a plain relative name")
    if not isinstance(parsed, FileUrl):
        base = parsed.url

        def put(f: tuple[str, bytes, str]) -> None:
            put_object(base + f[0], f[1], f[2], config)

        _each(put, files, pool)
        return
    root = parsed.path
    made: set[Path] = set()
    suffix = f".tmp-{os.getpid()}-{threading.get_ident()}"

    def write(f: tuple[str, bytes, str]) -> None:
        path = root / f[0]
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        tmp = str(path) + suffix + str(id(f))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f[1])
        finally:
            os.close(fd)
        os.replace(tmp, path)

    _each(write, files, pool)
    sync_local(prefix, config)


def _each(fn: Any, items: Sequence[Any], pool: Executor | None) -> None:
    """``fn`` on every item (on ``pool`` when given); the first failure is raised."""
    if pool is None:
        for item in items:
            fn(item)
    else:
        list(pool.map(fn, items))


def sync_local(url: str, config: StorageConfig) -> None:
    """Make every write under the ``file://`` prefix ``url`` durable at once:
    ``syncfs`` of its file system (one journal commit instead of one per file); nothing for s3://."""
    parsed = parse_object_url(url, config, prefix=True)
    if not isinstance(parsed, FileUrl):
        return
    path = parsed.path if parsed.path.is_dir() else parsed.path.parent
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc_syncfs is None or _libc_syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _load_syncfs() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_libc_syncfs = _load_syncfs()


# --- reading manifests ------------------------------------------------------------------------------
def iter_lines(
    url: str, config: StorageConfig, *, max_line_bytes: int | None = None, chunk_size: int = READ_CHUNK
) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` for every line of the object at ``url`` (1-based numbers; line
    endings ``\\n`` or ``\\r\\n`` removed; a final line without a newline counts; a UTF-8 BOM on
    line 1 is dropped; empty lines are yielded too, for the caller to skip, so numbers match an
    editor's). The URL is checked at once; read errors surface while iterating: media_not_found,
    transient (after retries), media_unreadable, and :class:`InvalidManifest` (code
    invalid_request, ``.line``) for a line longer than ``max_line_bytes``."""
    parsed = parse_object_url(url, config)
    limit = max_line_bytes or config.max_line_bytes
    if isinstance(parsed, FileUrl):
        chunks = _file_chunks(parsed, chunk_size)
    else:
        chunks = _s3_chunks(parsed, config, chunk_size)
    return split_lines(chunks, limit)


def split_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Re-cut a byte stream into lines; pure, the heart of :func:`iter_lines`."""
    pending = bytearray()  # an unfinished line carried over from earlier chunks
    number = 0

    def finish(line: bytes) -> tuple[int, bytes]:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > max_line_bytes:
            raise InvalidManifest(f"line {number} is longer than {max_line_bytes} bytes", line=number)
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM):]
        return number, line

    for chunk in chunks:
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            number += 1
            if pending:
                pending += chunk[start:nl]
                line, pending = bytes(pending), bytearray()
            else:
                line = chunk[start:nl]
            yield finish(line)
            start = nl + 1
        if start < len(chunk):
            pending += chunk[start:]
            if len(pending) > max_line_bytes + 1:  # +1: a '\r' may still come before the '\n'
                raise InvalidManifest(
                    f"line {number + 1} is longer than {max_line_bytes} bytes", line=number + 1
                )
    if pending:
        number += 1
        yield finish(bytes(pending))


def _file_chunks(u: FileUrl, chunk_size: int) -> Iterator[bytes]:
    try:
        f = open(u.path, "rb")  # noqa: SIM115 - closed in the generator's finally
    except FileNotFoundError:
        raise MediaNotFound(f"{u.url}: no such file") from None
    except OSError as e:
        raise MediaUnreadable(f"{u.url}: {e.strerror}") from None
    with f:
        while chunk := f.read(chunk_size):
            yield chunk


def _s3_chunks(u: S3Url, config: StorageConfig, chunk_size: int) -> Iterator[bytes]:
    client = s3_client(config)
    offset = 0
    etag: str | None = None
    failures = 0
    while True:
        args: dict[str, Any] = {"Bucket": u.bucket, "Key": u.key}
        if offset:
            args["Range"] = f"bytes={offset}-"
            args["IfMatch"] = etag
        try:
            try:
                resp = client.get_object(**args)
            except S3_ERRORS as e:
                err = map_boto_error(e, u.url, "GET")
                status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
                if offset and status == 416:  # broke off exactly at the end: nothing left to read
                    return
                if offset and status == 412:
                    raise MediaUnreadable(f"{u.url} changed while it was being read") from e
                raise err from e
            etag = etag or resp.get("ETag")
            body = resp["Body"]
            try:
                stream = body.iter_chunks(chunk_size)
                while True:
                    try:
                        chunk = next(stream)
                    except StopIteration:
                        return
                    except STREAM_ERRORS as e:
                        raise TransientError(f"S3 GET {u.url}: body broke off at byte {offset} ({e})") from e
                    offset += len(chunk)
                    failures = 0
                    yield chunk
            finally:
                body.close()
        except TransientError as e:
            if failures >= config.retries:
                raise TransientError(f"{e.message} ({failures + 1} attempts)") from e
            time.sleep(backoff_delay(failures, config, e.retry_after))
            failures += 1

