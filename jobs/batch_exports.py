"""The SQL side of writing a bulk batch's outputs in parts (``worker/export.py`` writes them).

``batches.parts_done`` is the number of leading parts already written. It only moves forward by a
conditional UPDATE from the value the writer started from, so two writers of the same part (a
duplicate message) cannot skip one, and a retry that moves it back (``jobs/batch_retry.py``)
wins over a writer that was still on an older part.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from core.db import Database
from jobs.states import TERMINAL
from jobs.tables import Batch, Job

_TERMINAL = frozenset(s.value for s in TERMINAL)
ROW_COLUMNS = (Job.id, Job.seq, Job.custom_id, Job.status, Job.output, Job.error, Job.meta, Job.metrics)


@dataclass(frozen=True)
class ExportInfo:
    output_url: str
    formats: list[str]
    task_names: list[str] | None
    part_rows: int
    parts_done: int
    max_seq: int  # -1: no jobs


def export_info(db: Database, batch_id: str) -> ExportInfo | None:
    """None when the batch has no bulk outputs (v1 batches: results.jsonl at the end only)."""
    with db.session() as session:
        b = session.execute(sa.select(Batch.output_url, Batch.output_formats, Batch.task_names,
                                      Batch.part_rows, Batch.parts_done)
                            .where(Batch.id == batch_id)).first()
        if b is None or not b.output_url or not b.output_formats:
            return None
        max_seq = session.scalar(sa.select(sa.func.max(Job.seq)).where(Job.batch_id == batch_id))
    return ExportInfo(b.output_url, list(b.output_formats), b.task_names, b.part_rows, b.parts_done,
                      -1 if max_seq is None else int(max_seq))


def part_rows(db: Database, batch_id: str, k: int, size: int) -> list[Any] | None:
    """The jobs of part ``k`` in seq order, or None while one of them has not ended."""
    with db.session() as session:
        rows = session.execute(
            sa.select(*ROW_COLUMNS).where(Job.batch_id == batch_id, Job.seq >= k * size,
                                          Job.seq < (k + 1) * size).order_by(Job.seq)
        ).all()
    if any(r.status not in _TERMINAL for r in rows):
        return None
    return list(rows)


def advance(db: Database, batch_id: str, k: int, size: int) -> tuple[bool, int]:
    """Part ``k`` is written: ``parts_done`` k → k + 1, unless a retry reopened one of its jobs
    since it was read. Returns (moved, the value now stored)."""
    reopened = sa.exists().where(Job.batch_id == batch_id, Job.seq >= k * size, Job.seq < (k + 1) * size,
                                 Job.status.not_in(_TERMINAL))
    with db.session() as session:
        res = session.execute(sa.update(Batch).where(Batch.id == batch_id, Batch.parts_done == k, ~reopened)
                              .values(parts_done=k + 1))
        stored = int(session.scalar(sa.select(Batch.parts_done).where(Batch.id == batch_id)) or 0)
    return bool(res.rowcount), stored  # type: ignore[attr-defined]


def iter_rows(db: Database, batch_id: str, *, errors_only: bool = False, chunk: int = 1000) -> Iterator[Any]:
    """Every job of the batch in seq order (keyset chunks, each its own short session)."""
    last = -1
    while True:
        q = sa.select(*ROW_COLUMNS).where(Job.batch_id == batch_id, Job.seq > last)
        if errors_only:
            q = q.where(Job.status.in_(("failed", "canceled")))
        with db.session() as session:
            rows = session.execute(q.order_by(Job.seq).limit(chunk)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def batch_row(db: Database, batch_id: str) -> Batch | None:
    with db.session() as session:
        return session.get(Batch, batch_id)


__all__ = ["ExportInfo", "advance", "batch_row", "export_info", "iter_rows", "part_rows"]
