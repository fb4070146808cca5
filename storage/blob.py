"""The bytes of one media item: in memory, spooled to a temporary file, or a local file in place.

Bodies up to ``StorageConfig.spool_bytes`` stay in memory; larger ones (long videos) roll over to a
named temporary file, so decoders that want a path (decord) get one without another copy. The
blob owns its temporary file: close it (or use it as a context manager) when done.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from storage.errors import MediaTooLarge, TransientError
from storage.sniff import SNIFF_BYTES, Kind, sniff

_SUFFIX = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
           "image/bmp": ".bmp", "image/tiff": ".tif", "video/mp4": ".mp4", "video/quicktime": ".mov",
           "video/webm": ".webm", "video/x-matroska": ".mkv", "video/x-msvideo": ".avi"}


class Spool:
    """A write-only sink that keeps the first ``threshold`` bytes in memory, then rolls to disk."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.size = 0
        self.head = b""
        self._buf: io.BytesIO | None = io.BytesIO()
        self._file: IO[bytes] | None = None

    def write(self, data: bytes | memoryview) -> None:
        if len(self.head) < SNIFF_BYTES:
            self.head += bytes(data[: SNIFF_BYTES - len(self.head)])
        if self._file is None and self.size + len(data) > self.threshold:
            self._roll()
        target = self._file if self._file is not None else self._buf
        assert target is not None
        target.write(data)
        self.size += len(data)

    def _roll(self) -> None:
        # A suffix that matches the bytes helps decoders that go by file name.
        suffix = _SUFFIX.get(sniff(self.head).mime or "", "")
        f = tempfile.NamedTemporaryFile(prefix="captionq-media-", suffix=suffix, delete=True)  # noqa: SIM115
        assert self._buf is not None
        f.write(self._buf.getbuffer())
        self._buf = None
        self._file = f

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._buf = None

    def take(self) -> tuple[bytes | None, IO[bytes] | None]:
        """Hand over the contents: bytes when in memory, else the (flushed) temporary file."""
        if self._file is not None:
            self._file.flush()
            return None, self._file
        assert self._buf is not None
        return self._buf.getvalue(), None


def copy_capped(
    chunks: Iterable[bytes], sink: Spool, *, max_bytes: int, deadline: float | None, what: str
) -> int:
    """Copy ``chunks`` into ``sink``, refusing more than ``max_bytes`` and stopping at ``deadline``
    (a ``time.monotonic()`` value): a server that drips one byte at a time must not hold a worker
    thread forever just because each read is within the read timeout."""
    for chunk in chunks:
        if sink.size + len(chunk) > max_bytes:
            raise MediaTooLarge(f"{what} is larger than the limit of {max_bytes} bytes")
        sink.write(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise TransientError(f"{what}: download took longer than the time allowed")
    return sink.size


class MediaBlob:
    """One fetched media item. ``kind``/``mime`` come from the bytes (sniffed), ``content_type``
    from the source (HTTP header, S3 metadata, data: URI) and is informative only."""

    def __init__(
        self, *, url: str, size: int, kind: Kind, mime: str, content_type: str | None,
        data: bytes | None = None, file: IO[bytes] | None = None, path: Path | None = None,
    ) -> None:
        if sum(x is not None for x in (data, file, path)) != 1:
            raise ValueError("exactly one of data, file, path")
        self.url, self.size, self.kind, self.mime, self.content_type = url, size, kind, mime, content_type
        self._data, self._file, self._path = data, file, path

    @property
    def in_memory(self) -> bool:
        return self._data is not None

    def read(self) -> bytes:
        """All bytes (bounded by the fetch's ``max_bytes``). Prefer :meth:`open` for big videos."""
        if self._data is not None:
            return self._data
        with self.open() as f:
            return f.read()

    def open(self) -> IO[bytes]:
        """A new readable, seekable file at offset 0; the caller closes it."""
        if self._data is not None:
            return io.BytesIO(self._data)
        path = self._file.name if self._file is not None else self._path
        assert path is not None
        return open(path, "rb")

    @contextmanager
    def as_path(self) -> Iterator[Path]:
        """A filesystem path holding the bytes (a temporary copy only for in-memory blobs)."""
        if self._path is not None:
            yield self._path
            return
        if self._file is not None:
            yield Path(self._file.name)
            return
        assert self._data is not None
        with tempfile.NamedTemporaryFile(prefix="captionq-media-", suffix=_SUFFIX.get(self.mime, "")) as f:
            f.write(self._data)
            f.flush()
            yield Path(f.name)

    def close(self) -> None:
        """Delete the temporary file, if any (an in-memory or in-place blob has nothing to free)."""
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> MediaBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "memory" if self._data is not None else "tempfile" if self._file is not None else "file"
        return f"MediaBlob({self.url[:60]!r}, {self.mime}, {self.size} bytes, {where})"

