"""``/openai/v1/files``: batch input files (JSONL, purpose ``batch``) and the output / error
files of batches.

Uploaded files are streamed to ``CAPTIONQ_OPENAI_FILES_URL`` (``s3://bucket/prefix/``, shared by
every API host; ``<prefix><tenant>/<file id>.jsonl`` and a ``.json`` description beside it), or
without it kept under ``<data_dir>/openai-files/<tenant>/`` (the API processes of one machine
share that). Output and error files are not stored: ``file-out-<batch id>`` and
``file-err-<batch id>`` are rendered from the batch's jobs whenever they are read.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from api.context import AppContext, get_ctx, tenant
from api.openai import render
from api.openai.errors import OpenAIError, OpenAIRoute
from jobs import batches, ids
from storage.errors import MediaNotFound
from storage.objects import iter_lines, put_object

router = APIRouter(prefix="/openai/v1", tags=["openai"], route_class=OpenAIRoute, include_in_schema=False)
Tenant = Annotated[str, Depends(tenant)]

MAX_FILE_BYTES = 200 * 1024 * 1024
_ID = re.compile(r"^file-[A-Za-z0-9_-]{1,80}$")
_DERIVED = re.compile(r"^file-(out|err)-(bat_[A-Za-z0-9_-]+)$")


def _dir(ctx: AppContext, tenant_id: str) -> Path:
    return Path(ctx.settings.data_dir) / "openai-files" / tenant_id


def _not_found(file_id: str) -> OpenAIError:
    return OpenAIError(f"No such File object: {file_id}", status=404, param="file_id", code="not_found")


def file_object(file_id: str, size: int, created: int, filename: str, purpose: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": created, "filename": filename,
            "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None}


def _s3(ctx: AppContext, tenant_id: str) -> str | None:
    base = ctx.settings.openai_files_url
    return None if base is None else f"{base.rstrip('/')}/{tenant_id}/"


def read_meta(ctx: AppContext, tenant_id: str, file_id: str) -> dict[str, Any]:
    if not _ID.match(file_id):
        raise _not_found(file_id)
    base = _s3(ctx, tenant_id)
    if base is not None:
        try:
            for _, line in iter_lines(f"{base}{file_id}.json", ctx.checker.config):
                return json.loads(line)  # type: ignore[no-any-return]
        except MediaNotFound:
            pass
        raise _not_found(file_id)
    meta = _dir(ctx, tenant_id) / f"{file_id}.json"
    if not meta.exists():
        raise _not_found(file_id)
    return json.loads(meta.read_text())  # type: ignore[no-any-return]


def input_lines(ctx: AppContext, tenant_id: str, file_id: str) -> Iterator[bytes]:
    read_meta(ctx, tenant_id, file_id)
    base = _s3(ctx, tenant_id)
    if base is not None:
        for _, line in iter_lines(f"{base}{file_id}.jsonl", ctx.checker.config):
            yield line + b"\n"
        return
    with open(_dir(ctx, tenant_id) / f"{file_id}.jsonl", "rb") as f:
        yield from f


def _too_large() -> OpenAIError:
    return OpenAIError(f"the file is larger than {MAX_FILE_BYTES} bytes", status=413,
                       param="file", code="file_too_large")


@router.post("/files")
async def upload(request: Request, tenant_id: Tenant, file: Annotated[UploadFile, File()],
                 purpose: Annotated[str, Form()]) -> dict[str, Any]:
    ctx = get_ctx(request)
    if purpose != "batch":
        raise OpenAIError("only purpose 'batch' is supported", param="purpose")
    file_id = f"file-{ids.job_id().removeprefix('job_')}"
    folder = _dir(ctx, tenant_id)

    def capped() -> Iterator[bytes]:
        size = 0
        while chunk := file.file.read(1 << 20):  # streamed, never whole in memory
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise _too_large()  # a multipart upload in progress is aborted by put_object
            yield chunk

    def store_s3(base: str) -> dict[str, Any]:
        stored = put_object(f"{base}{file_id}.jsonl", capped(), "application/jsonl", ctx.checker.config)
        obj = file_object(file_id, stored.size, int(time.time()), file.filename or "batch.jsonl", purpose)
        put_object(f"{base}{file_id}.json", json.dumps(obj).encode(), "application/json", ctx.checker.config)
        return obj

    base = _s3(ctx, tenant_id)
    if base is not None:
        return await to_thread.run_sync(store_s3, base)  # type: ignore[no-any-return]

    def store() -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        size = 0
        with open(folder / f"{file_id}.jsonl", "wb") as out:
            while chunk := file.file.read(1 << 20):  # streamed to disk, never whole in memory
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    out.close()
                    (folder / f"{file_id}.jsonl").unlink()
                    raise _too_large()
                out.write(chunk)
        obj = file_object(file_id, size, int(time.time()), file.filename or "batch.jsonl", purpose)
        (folder / f"{file_id}.json").write_text(json.dumps(obj))
        return obj

    return await to_thread.run_sync(store)  # type: ignore[no-any-return]


@router.get("/files/{file_id}")
async def get_file(request: Request, file_id: str, tenant_id: Tenant) -> dict[str, Any]:
    ctx = get_ctx(request)
    derived = _DERIVED.match(file_id)
    if derived:
        batch = await to_thread.run_sync(_batch, ctx, tenant_id, file_id, derived.group(2))
        created = int(batch.created_at.timestamp())
        return file_object(file_id, 0, created, f"batch_{derived.group(1)}put.jsonl", "batch_output")
    return await to_thread.run_sync(read_meta, ctx, tenant_id, file_id)  # type: ignore[no-any-return]


def _batch(ctx: AppContext, tenant_id: str, file_id: str, batch_id: str) -> Any:
    try:
        return batches.get_batch(ctx.service, tenant_id, batch_id)
    except Exception:
        raise _not_found(file_id) from None


@router.get("/files/{file_id}/content", response_model=None)
async def file_content(request: Request, file_id: str, tenant_id: Tenant) -> StreamingResponse:
    ctx = get_ctx(request)
    derived = _DERIVED.match(file_id)
    if derived is None:
        await to_thread.run_sync(read_meta, ctx, tenant_id, file_id)
        return StreamingResponse(input_lines(ctx, tenant_id, file_id), media_type="application/jsonl")
    batch = await to_thread.run_sync(_batch, ctx, tenant_id, file_id, derived.group(2))
    errors = derived.group(1) == "err"
    model = (batch.meta or {}).get("openai_model", "")
    return StreamingResponse(_result_lines(ctx, batch.id, model, errors), media_type="application/jsonl")


def _rows(ctx: AppContext, batch_id: str, chunk: int = 1000) -> Iterator[dict[str, Any]]:
    """The batch's jobs in submission order with their metrics (for ``usage``), keyset-paged."""
    import sqlalchemy as sa

    from jobs.tables import Job

    last = -1
    while True:
        with ctx.db.session() as session:
            rows = session.execute(
                sa.select(Job.id, Job.seq, Job.custom_id, Job.status, Job.output, Job.error, Job.metrics)
                .where(Job.batch_id == batch_id, Job.seq > last).order_by(Job.seq).limit(chunk)).all()
        if not rows:
            return
        for r in rows:
            yield {"job_id": r.id, "custom_id": r.custom_id, "status": r.status, "output": r.output,
                   "error": r.error, "metrics": r.metrics}
        last = rows[-1].seq


def _result_lines(ctx: AppContext, batch_id: str, model: str, errors: bool) -> Iterator[bytes]:
    for row in _rows(ctx, batch_id):
        ok = row["status"] == "succeeded"
        if row["status"] in ("queued", "running") or ok == errors:
            continue
        line: dict[str, Any] = {"id": f"batch_req_{row['job_id']}", "custom_id": row["custom_id"]}
        if ok:
            job = {"id": row["job_id"], "output": row["output"], "metrics": row.get("metrics") or {},
                   "created_at": None}
            line["response"] = {"status_code": 200, "request_id": row["job_id"],
                                "body": render.completion(job, model)}
            line["error"] = None
        else:
            err = row["error"] or {}
            line["response"] = None
            line["error"] = {"code": err.get("code") or row["status"],
                             "message": err.get("message") or f"the request ended {row['status']}"}
        yield json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
