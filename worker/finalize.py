"""Batch finalisation: write ``results.jsonl`` to the batch's ``output_url``, then mark the batch
finished (``completed`` + ``batch.completed``). Runs on the io queue.

Idempotent: the results are a pure function of the finished jobs, so writing them again after a
duplicate message or a crash between the upload and the mark produces the same object, and
``JobService.mark_batch_finalized`` is a conditional UPDATE that happens once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from storage.objects import put_object
from worker.runtime import Runtime

log = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"


def results_url(output_url: str) -> str:
    """``s3://bucket/prefix/`` → ``s3://bucket/prefix/results.jsonl`` (a URL that already names
    a ``.jsonl`` object is used as is)."""
    if output_url.endswith(".jsonl"):
        return output_url
    return output_url.rstrip("/") + "/" + RESULTS_NAME


def ndjson(lines: Iterable[dict[str, Any]], chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Result lines as NDJSON bytes, in chunks of about ``chunk_bytes`` (streamed to S3)."""
    buf: list[bytes] = []
    size = 0
    for line in lines:
        b = json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        buf.append(b)
        size += len(b)
        if size >= chunk_bytes:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def finalize_batch(rt: Runtime, batch_id: str) -> str:
    """Write the results (when the batch has an ``output_url``) and finish the batch. A bulk
    batch (with ``output_formats``) writes its remaining parts, then its final files."""
    from worker import export

    output_url = rt.jobs.batch_output_url(batch_id)
    batch = export.bx.batch_row(rt.jobs.db, batch_id)
    if batch is not None and batch.output_formats and output_url:
        export.export_parts(rt.jobs.db, rt.storage, batch_id)
        status = ("expired" if batch.expired_at is not None
                  else "canceled" if batch.cancel_requested_at is not None else "completed")
        export.write_final(rt.jobs.db, rt.storage, batch_id, status)
        log.info("batch %s: outputs written under %s", batch_id, output_url)
    elif output_url:
        target = results_url(output_url)
        stored = put_object(target, ndjson(rt.jobs.iter_batch_results(batch_id)), "application/x-ndjson",
                            rt.storage)
        log.info("batch %s: results written to %s (%d bytes)", batch_id, stored.url, stored.size)
    if rt.jobs.mark_batch_finalized(batch_id):
        log.info("batch %s finalized", batch_id)
        return "finalized"
    return "already finalized"
