"""Several models: the model each job runs on, and the checkpoint revision that answered it.

- ``jobs.model``: the registry name of the job's model (``core/registry.py``); NULL for jobs
  stored before, which the default model's workers serve (the legacy ``gpu`` queue);
- ``jobs.model_revision``: the checkpoint revision of the worker whose claim runs the job;
- ``ix_jobs_status_model_created``: queue depth and oldest queued job per model
  (``GET /v1/models``, the sweeper's per-model re-send).

Runs on PostgreSQL and SQLite (batch mode).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("model", sa.String(64), nullable=True))
        batch.add_column(sa.Column("model_revision", sa.String(80), nullable=True))
    op.create_index("ix_jobs_status_model_created", "jobs", ["status", "model", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status_model_created", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("model_revision")
        batch.drop_column("model")
