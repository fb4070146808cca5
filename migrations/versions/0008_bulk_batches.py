"""Bulk batches: where a batch came from, how its outputs are written, its completion window.

- ``batches.source``: the batch's source (an S3 prefix, a folder, WebDataset shards, a dataset),
  echoed by the API; NULL for inline and manifest batches.
- ``batches.output_formats``: the output formats asked for (``jsonl``, ``parquet``,
  ``sidecar``); NULL keeps the v1 behaviour (one ``results.jsonl`` when the batch finishes).
- ``batches.task_names``: the task names of the batch's job requests, one Parquet column each.
- ``batches.part_rows`` / ``batches.parts_done``: outputs are written in parts of ``part_rows``
  consecutive ``seq`` values; ``parts_done`` is how many leading parts are written.
- ``batches.expires_at`` / ``batches.expired_at``: the completion window's end, and when the
  sweeper ended the batch at it (status ``expired``).
- ``batches.resume_from``: the earlier batch whose succeeded items this one skipped.

Runs on PostgreSQL (JSONB) and SQLite (JSON text, batch mode).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("source", JSON, nullable=True))
        batch.add_column(sa.Column("output_formats", JSON, nullable=True))
        batch.add_column(sa.Column("task_names", JSON, nullable=True))
        batch.add_column(sa.Column("part_rows", sa.Integer, nullable=False, server_default="1000"))
        batch.add_column(sa.Column("parts_done", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("resume_from", sa.String(40), nullable=True))
    # The sweeper's scan for batches past their completion window.
    op.create_index("ix_batches_expires_unfinalized", "batches", ["expires_at"],
                    postgresql_where=sa.text("finalized_at IS NULL AND expires_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_batches_expires_unfinalized", table_name="batches")
    with op.batch_alter_table("batches") as batch:
        for name in ("resume_from", "expired_at", "expires_at", "parts_done", "part_rows", "task_names",
                     "output_formats", "source"):
            batch.drop_column(name)
