"""Writing a bulk batch's outputs while it runs, then its final files (layout: jobs/batch_outputs.py).

``export_parts`` writes every part whose jobs have all ended, in order, from ``parts_done`` on;
it runs on the io queue whenever another ``part_rows`` jobs of the batch have ended
(``jobs.transitions.bump_batch``) and once more from ``finalize_batch`` before the final files.
Each part is a pure function of its jobs, so writing it twice gives the same objects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobs import batch_exports as bx
from jobs import batch_outputs as out
from storage.config import StorageConfig
from storage.objects import put_many, put_object
from worker.finalize import ndjson

log = logging.getLogger(__name__)

SIDECAR_THREADS = 16


def _url(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


def write_part(storage: StorageConfig, info: bx.ExportInfo, k: int, rows: list[Any],
               pool: ThreadPoolExecutor | None = None) -> int:
    """Every file of part ``k``; returns how many objects were written."""
    files: list[tuple[str, bytes, str]] = [
        (f"parts/errors-{k:06d}.jsonl", out.jsonl(rows, errors_only=True), "application/x-ndjson")]
    if "jsonl" in info.formats:
        files.append((f"parts/results-{k:06d}.jsonl", out.jsonl(rows), "application/x-ndjson"))
    if "sidecar" in info.formats:
        for r in rows:
            files.extend(out.sidecars(r, info.task_names))
    # The Parquet part last: it is the one readers list, so once it is there the rest are too.
    if "parquet" in info.formats:
        files.append((f"parquet/part-{k:06d}.parquet", out.parquet_bytes(rows, info.task_names),
                      "application/vnd.apache.parquet"))

    head, last = files[:-1], files[-1]
    put_many(info.output_url, head, storage, pool if len(head) > 4 else None)  # durable on return
    put_object(_url(info.output_url, last[0]), last[1], last[2], storage)
    return len(files)


def export_parts(db: Any, storage: StorageConfig, batch_id: str) -> int:
    """Write the complete parts from ``parts_done`` on; returns how many parts were written."""
    info = bx.export_info(db, batch_id)
    if info is None:
        return 0
    k, written = info.parts_done, 0
    with ThreadPoolExecutor(SIDECAR_THREADS, thread_name_prefix="export") as pool:
        while k * info.part_rows <= info.max_seq:
            rows = bx.part_rows(db, batch_id, k, info.part_rows)
            if rows is None:  # a job of this part is still queued or running
                break
            write_part(storage, info, k, rows, pool)
            written += 1
            moved, stored = bx.advance(db, batch_id, k, info.part_rows)
            if not moved and stored == k:  # a retry reopened this part while it was written
                break
            k = stored  # normally k + 1; lower when a retry reopened an earlier part meanwhile
    if written:
        log.info("batch %s: %d output part(s) written, %d done", batch_id, written, k)
    return written


def write_final(db: Any, storage: StorageConfig, batch_id: str, status: str) -> None:
    """After the last part: ``results.jsonl`` (format jsonl), ``errors.jsonl``, then
    ``manifest.json`` (last, so its presence means everything it lists is written)."""
    info = bx.export_info(db, batch_id)
    batch = bx.batch_row(db, batch_id)
    if info is None or batch is None:
        return
    parts = (info.max_seq // info.part_rows + 1) if info.max_seq >= 0 else 0

    def lines(errors_only: bool) -> Iterable[dict[str, Any]]:
        from jobs.render import result_line
        return (result_line(r) for r in bx.iter_rows(db, batch_id, errors_only=errors_only))

    if "jsonl" in info.formats:
        put_object(_url(info.output_url, "results.jsonl"), ndjson(lines(False)), "application/x-ndjson",
                   storage)
    put_object(_url(info.output_url, "errors.jsonl"), ndjson(lines(True)), "application/x-ndjson", storage)
    put_object(_url(info.output_url, "manifest.json"), out.manifest(batch, status, parts, info.formats),
               "application/json", storage)


__all__ = ["export_parts", "write_final", "write_part"]
