"""What a bulk batch writes under its ``output_url``, as bytes: pure functions of job rows.

Layout (names relative to the output prefix)::

    parts/results-000000.jsonl     every item of part 0 (format jsonl), result lines as results.jsonl
    parts/errors-000000.jsonl      the failed and canceled items of part 0 (always)
    parquet/part-000000.parquet    one row per item (format parquet)
    sidecars/<custom_id stem>.txt  the answer next to where the item was in its source (format
                                   sidecar); .json instead for jobs with tasks or structured output
    results.jsonl, errors.jsonl    every item / every failure, written when the batch ends
    manifest.json                  written last: the counts and every part's files

Part ``k`` holds the items whose ``seq`` is in ``[k * part_rows, (k + 1) * part_rows)``; it is
written once all of them have ended, and written again whole (same names) if a retry changes
one of them. Every object is written whole by one PUT (or a rename), so a reader never sees half
a part and a writer that dies mid-part leaves nothing that the next attempt does not replace.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from jobs.render import result_line

MEDIA_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mp4", ".webm",
                  ".mov", ".mkv", ".avi", ".m4v")
TEXT_COLUMN = "text"  # the answer column of jobs without tasks


def part_names(k: int, formats: Sequence[str]) -> list[str]:
    names = [f"parts/errors-{k:06d}.jsonl"]
    if "jsonl" in formats:
        names.insert(0, f"parts/results-{k:06d}.jsonl")
    if "parquet" in formats:
        names.append(f"parquet/part-{k:06d}.parquet")
    return names


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def jsonl(rows: Iterable[Any], *, errors_only: bool = False) -> bytes:
    return b"".join(_line(result_line(r)) for r in rows
                    if not errors_only or r.status in ("failed", "canceled"))


def task_text(output: dict[str, Any] | None, task: str | None) -> str | None:
    """The answer text of one task (``output["tasks"][task]``), or of a job without tasks."""
    if not isinstance(output, dict):
        return None
    if task is not None:
        sub = (output.get("tasks") or {}).get(task)
        return sub.get("text") if isinstance(sub, dict) else None
    text = output.get("text")
    return text if isinstance(text, str) else None


def parquet_columns(task_names: Sequence[str] | None) -> list[str]:
    """The answer columns: one per task name, else one ``text`` column."""
    return list(task_names) if task_names else [TEXT_COLUMN]


def parquet_bytes(rows: Sequence[Any], task_names: Sequence[str] | None) -> bytes:
    """One Parquet file, one row per item: answer column(s), then ``custom_id``, ``job_id``,
    ``seq``, ``status``, ``error_code``, ``error_message``, ``metadata`` and ``output`` (JSON
    text), ``input_tokens``, ``output_tokens``. The schema is the same for every part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    answers = parquet_columns(task_names)
    cols: dict[str, list[Any]] = {c: [] for c in answers}
    meta_cols: dict[str, list[Any]] = {k: [] for k in (
        "custom_id", "job_id", "seq", "status", "error_code", "error_message", "metadata", "output",
        "input_tokens", "output_tokens")}
    for r in rows:
        for c in answers:
            cols[c].append(task_text(r.output, c if task_names else None))
        err = r.error or {}
        metrics = r.metrics or {}
        meta_cols["custom_id"].append(r.custom_id)
        meta_cols["job_id"].append(r.id)
        meta_cols["seq"].append(r.seq)
        meta_cols["status"].append(r.status)
        meta_cols["error_code"].append(err.get("code"))
        meta_cols["error_message"].append(err.get("message"))
        meta_cols["metadata"].append(json.dumps(r.meta or {}, ensure_ascii=False))
        meta_cols["output"].append(json.dumps(r.output, ensure_ascii=False) if r.output is not None else None)
        meta_cols["input_tokens"].append(metrics.get("input_tokens"))
        meta_cols["output_tokens"].append(metrics.get("output_tokens"))
    fields = [pa.field(c, pa.string()) for c in answers] + [
        pa.field("custom_id", pa.string()), pa.field("job_id", pa.string()), pa.field("seq", pa.int64()),
        pa.field("status", pa.string()), pa.field("error_code", pa.string()),
        pa.field("error_message", pa.string()), pa.field("metadata", pa.string()),
        pa.field("output", pa.string()), pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
    ]
    table = pa.Table.from_pydict({**cols, **meta_cols}, schema=pa.schema(fields))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def sidecar_stem(custom_id: str | None, job_id: str) -> str:
    """A safe relative object name for an item's sidecars: its ``custom_id`` (the source path)
    without a media extension; segments that could escape the prefix are replaced."""
    name = custom_id or job_id
    low = name.lower()
    for suffix in MEDIA_SUFFIXES:
        if low.endswith(suffix):
            name = name[: -len(suffix)]
            break
    parts = [p if p not in ("", ".", "..") else "_" for p in name.replace("\\", "/").split("/")]
    return "/".join(parts)


def sidecars(row: Any, task_names: Sequence[str] | None) -> list[tuple[str, bytes, str]]:
    """(name, bytes, content type) of one succeeded item's sidecar: one file per item, since
    creating files is what a sidecar export spends its time on. A job without tasks whose output
    is its text: ``<stem>.txt`` with the answer. Otherwise (tasks, boxes, several rounds):
    ``<stem>.json`` with ``{"custom_id", "job_id", "tasks": {name: text}, "output", "metadata"}``."""
    if row.status != "succeeded":
        return []
    stem = "sidecars/" + sidecar_stem(row.custom_id, row.id)
    output = row.output if isinstance(row.output, dict) else {}
    plain = not task_names and "tasks" not in output and not output.get("boxes") and \
        len(output.get("rounds") or []) <= 1
    text = task_text(output, None)
    if plain and text is not None:
        return [(f"{stem}.txt", text.encode(), "text/plain; charset=utf-8")]
    body = {"custom_id": row.custom_id, "job_id": row.id,
            "tasks": {t: task_text(output, t) for t in task_names or ()},
            "output": row.output, "metadata": row.meta if row.meta is not None else {}}
    return [(f"{stem}.json", _line(body), "application/json")]


def manifest(batch: Any, status: str, parts: int, formats: Sequence[str]) -> bytes:
    """``manifest.json``: written last, so its presence means every file it names is there."""
    body = {
        "object": "batch_output", "batch_id": batch.id, "status": status,
        "counts": {k: getattr(batch, k) for k in ("total", "succeeded", "failed", "canceled")},
        "formats": list(formats), "part_rows": batch.part_rows, "task_names": batch.task_names,
        "parts": [{"part": k, "first_seq": k * batch.part_rows, "last_seq": (k + 1) * batch.part_rows - 1,
                   "files": part_names(k, formats)} for k in range(parts)],
        "results": "results.jsonl" if "jsonl" in formats else None,
        "errors": "errors.jsonl",
        "parquet": "parquet/" if "parquet" in formats else None,
        "sidecars": "sidecars/" if "sidecar" in formats else None,
    }
    return json.dumps(body, indent=1, ensure_ascii=False).encode() + b"\n"


__all__ = ["jsonl", "manifest", "parquet_bytes", "part_names", "sidecar_stem", "sidecars", "task_text"]
