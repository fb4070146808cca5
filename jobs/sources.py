"""Batch sources: where a batch's items come from when they are not listed one by one.

A source is a JSON object (``BatchRequest.source``)::

    {"url": "s3://bucket/photos/**/*.jpg", "include": [...], "exclude": [...]}     files under a prefix
    {"url": "file:///data/photos/"}                                              a folder (local mode)
    {"url": "s3://bucket/shards/shard-{000000..000099}.tar"}                    WebDataset shards
    {"url": "file:///data/ds/", "format": "hf_dataset", "image_column": "image"}  a saved HF dataset
    {"url": "file:///data/t/*.parquet", "image_column": "img", "metadata_columns": ["label"]}

Each is read as a stream (one listing page, one tar member, one Parquet/Arrow record batch at a
time) and turned into plain job objects ``{"custom_id", "media", "metadata"}`` that the batch's
``defaults`` (prompts, tasks, generation) are merged under, exactly like manifest lines. The
``custom_id`` is derived from the item's place in the source, so the same source always gives the
same ids (``resume_from`` relies on it) and sidecar outputs mirror the source layout:

- files: the key relative to the prefix (``2024/cat.jpg``);
- WebDataset: ``<shard name without .tar>/<sample key>``; the media is a byte range of the shard
  and the sample's ``.json``/``.txt`` members travel in ``metadata`` (``{"json": …, "txt": …}``);
- HF dataset: the ``id_column`` value, else the row number; Parquet: the id column, else
  ``<file name without .parquet>/<row>``. Image cells that hold bytes become ``data:`` URLs (so
  each is capped by ``max_data_uri_bytes``); cells that hold a URL or a path are used as URLs,
  paths relative to the dataset folder.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import InvalidRequest
from jobs.requests import error, pydantic_errors
from storage.config import StorageConfig
from storage.listing import GlobFilter, expand_braces, list_objects, split_glob
from storage.sniff import SNIFF_BYTES, sniff
from storage.tar_members import iter_samples
from storage.urls import FileUrl, parse_object_url

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
VIDEO_EXTS = frozenset({"mp4", "webm", "mov", "mkv", "avi", "m4v"})
TEXT_EXTS = frozenset({"json", "txt", "cls", "caption"})
RECORDS_PER_READ = 1024

Format = Literal["files", "webdataset", "hf_dataset", "parquet"]


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    url: str = Field(description="s3:// or file:// prefix (globs allowed), shard pattern, dataset or Parquet")
    format: Format | None = Field(None, description="Inferred from the URL when absent")
    include: list[str] = Field(default_factory=list, max_length=64)
    exclude: list[str] = Field(default_factory=list, max_length=64)
    media_type: Literal["image", "video"] | None = Field(None, description="Default: from the extension")
    image_column: str = "image"
    id_column: str | None = None
    metadata_columns: list[str] | None = None


def parse_source(raw: Any, config: StorageConfig) -> SourceSpec:
    """Validate a source object; 422 with ``["source", …]`` locations."""
    try:
        spec = SourceSpec.model_validate(raw)
    except ValidationError as exc:
        errs = pydantic_errors(exc, ["source"])
        raise InvalidRequest(f"{len(errs)} invalid field(s) in source", errors=errs) from None
    fmt = spec.format or infer_format(spec.url)
    base, _ = split_glob(spec.url) if fmt in ("files", "parquet") else (spec.url, None)
    if fmt == "webdataset":
        base = next(expand_braces(spec.url))
    try:
        parse_object_url(base, config, prefix=fmt in ("files", "hf_dataset") or base.endswith("/"))
    except Exception as exc:
        code = getattr(exc, "code", "url_not_allowed")
        raise InvalidRequest(f"source.url: {exc}",
                             errors=[error(["source", "url"], str(exc), code)]) from None
    if fmt == "hf_dataset" and not base.startswith("file:"):
        raise InvalidRequest("source: a Hugging Face dataset is read from a local folder (file://)",
                             errors=[error(["source", "url"], "expected a file:// folder")])
    return spec.model_copy(update={"format": fmt})


def infer_format(url: str) -> Format:
    path = url.split("?", 1)[0].lower()
    if path.endswith(".tar") or path.endswith(".tar}"):
        return "webdataset"
    if path.endswith(".parquet"):
        return "parquet"
    return "files"


def iter_items(spec: SourceSpec, config: StorageConfig) -> Iterator[dict[str, Any]]:
    """The source's items as job objects, in a stable order (read lazily)."""
    if spec.format == "webdataset":
        yield from _webdataset(spec, config)
    elif spec.format in ("hf_dataset", "parquet"):
        yield from _tables(spec, config)
    else:
        yield from _files(spec, config)


def _kind(name: str, spec: SourceSpec) -> str | None:
    if spec.media_type:
        return spec.media_type
    ext = name.rpartition(".")[2].lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def _files(spec: SourceSpec, config: StorageConfig) -> Iterator[dict[str, Any]]:
    prefix, pattern = split_glob(spec.url)
    include = list(spec.include) + ([pattern] if pattern else [])
    for obj in list_objects(prefix, config, GlobFilter(include, spec.exclude)):
        kind = _kind(obj.rel, spec)
        if kind is None:  # not media by its name (a README, a .json next to the photos)
            continue
        yield {"custom_id": obj.rel, "media": [{"type": kind, "url": obj.url}]}


def _webdataset(spec: SourceSpec, config: StorageConfig) -> Iterator[dict[str, Any]]:
    media_exts = IMAGE_EXTS | VIDEO_EXTS
    for shard in expand_braces(spec.url):
        name = shard.rstrip("/").rpartition("/")[2].removesuffix(".tar")
        for sample in iter_samples(shard, config, media_exts, TEXT_EXTS):
            ext, member = next(iter(sample.media.items()))
            kind = _kind(ext, spec) or "image"
            meta: dict[str, Any] = {}
            for text_ext, text in sample.texts.items():
                if text_ext == "json":
                    try:
                        meta["json"] = json.loads(text)
                    except ValueError:
                        meta["json"] = text
                else:
                    meta[text_ext] = text
            item: dict[str, Any] = {
                "custom_id": f"{name}/{sample.key}",
                "media": [{"type": kind, "url": shard, "byte_range": [member.offset, member.size]}],
            }
            if meta:
                item["metadata"] = meta
            yield item


# --- tables: HF datasets saved on disk (Arrow) and Parquet files -----------------------------------
def _tables(spec: SourceSpec, config: StorageConfig) -> Iterator[dict[str, Any]]:
    import pyarrow as pa  # only batches with a table source pay for the import
    import pyarrow.parquet as pq

    files = _table_files(spec, config)
    row = 0
    for path, rel in files:
        stem = rel.removesuffix(".parquet").removesuffix(".arrow")
        base = PurePosixPath(path).parent
        if spec.format == "parquet":
            pf = pq.ParquetFile(path)
            batches: Iterator[Any] = pf.iter_batches(batch_size=RECORDS_PER_READ)
        else:
            reader = _open_arrow(pa, path)
            batches = iter(reader)
        local = 0
        for rb in batches:
            if spec.image_column not in rb.schema.names:
                raise InvalidRequest(
                    f"source: no column {spec.image_column!r} in {rel} "
                    f"(columns: {', '.join(rb.schema.names)})",
                    errors=[error(["source", "image_column"], f"no column {spec.image_column!r}")])
            for rec in rb.to_pylist():
                ident = rec.get(spec.id_column) if spec.id_column else None
                if ident is not None:
                    cid = str(ident)
                elif spec.format == "parquet":
                    cid = f"{stem}/{local}"
                else:
                    cid = str(row)
                yield _table_item(rec, cid, spec, str(base))
                row += 1
                local += 1


def _open_arrow(pa: Any, path: str) -> Any:
    """An HF ``save_to_disk`` data file: the Arrow IPC stream format (read batch by batch)."""
    source = pa.memory_map(path)
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source)  # the file (random access) format


def _table_files(spec: SourceSpec, config: StorageConfig) -> list[tuple[str, str]]:
    """(local path, name relative to the dataset) of each data file, in order."""
    if spec.format == "hf_dataset":
        root = parse_object_url(spec.url, config, prefix=True)
        assert isinstance(root, FileUrl)
        state = root.path / "state.json"
        if not state.exists():
            raise InvalidRequest(f"source: {root.path} is not a dataset saved with save_to_disk "
                                 "(no state.json)",
                                 errors=[error(["source", "url"], "no state.json in the folder")])
        names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        return [(str(root.path / n), n) for n in names]
    prefix, pattern = split_glob(spec.url)
    if pattern is None:  # one file
        parsed = parse_object_url(spec.url, config)
        if not isinstance(parsed, FileUrl):
            raise InvalidRequest("source: Parquet files are read from local folders (file://)",
                                 errors=[error(["source", "url"], "expected a file:// URL")])
        return [(str(parsed.path), parsed.path.name)]
    if not prefix.startswith("file:"):
        raise InvalidRequest("source: Parquet files are read from local folders (file://)",
                             errors=[error(["source", "url"], "expected a file:// URL")])
    root = parse_object_url(prefix, config, prefix=True)
    assert isinstance(root, FileUrl)
    return [(str(root.path / o.rel), o.rel)
            for o in list_objects(prefix, config, GlobFilter([pattern, *spec.include], spec.exclude))]


def _table_item(rec: dict[str, Any], cid: str, spec: SourceSpec, base: str) -> dict[str, Any]:
    cell = rec.get(spec.image_column)
    url = _cell_url(cell, base)
    name = url if not url.startswith("data:") else ""
    kind = _kind(name, spec) or ("video" if url.startswith("data:video/") else "image")
    item: dict[str, Any] = {"custom_id": cid, "media": [{"type": kind, "url": url}]}
    cols = spec.metadata_columns
    if cols is None:
        cols = [c for c in rec if c != spec.image_column]
    meta = {c: rec.get(c) for c in cols if c in rec and _jsonable(rec.get(c))}
    if meta:
        item["metadata"] = meta
    return item


def _cell_url(cell: Any, base: str) -> str:
    """An image cell as a URL: bytes → data: URL; a URL → itself; a path → file:// (relative
    paths from the dataset's folder). HF ``Image`` cells are ``{"bytes", "path"}``."""
    if isinstance(cell, dict):
        cell = cell.get("bytes") or cell.get("path")
    if isinstance(cell, bytes | bytearray):
        mime = sniff(bytes(cell[:SNIFF_BYTES])).mime or "application/octet-stream"
        return f"data:{mime};base64,{base64.b64encode(cell).decode()}"
    if isinstance(cell, str) and cell:
        if "://" in cell or cell.startswith("data:"):
            return cell
        path = PurePosixPath(cell if cell.startswith("/") else f"{base}/{cell}")
        return "file://" + str(path)
    return ""  # judged (and refused) as a URL like any other bad one


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | list | dict) or value is None


__all__ = ["SourceSpec", "infer_format", "iter_items", "parse_source"]
