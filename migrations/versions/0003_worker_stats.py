"""Worker engine statistics: ``workers.stats``, the JSON snapshot each heartbeat writes.

- ``workers.stats``: the engine's counters (``models.batcher.BatcherStats`` field names: slots,
  KV budget, tokens generated, decode steps, ...) and the rates the worker computed over its last
  heartbeat interval (tokens/s, batch occupancy); NULL until the first heartbeat with stats.
  ``GET /v1/workers`` reads it (``jobs/heartbeats.py`` describes the shape).

Runs on PostgreSQL (JSONB) and SQLite (JSON text, batch mode).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("stats", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("stats")
