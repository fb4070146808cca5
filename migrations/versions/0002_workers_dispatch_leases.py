"""Worker heartbeats, the job's worker and last dispatch, idempotency claim leases.

- ``workers``: one row per running GPU worker process, ``last_seen`` refreshed every few seconds;
  the sweeper requeues the running jobs of a worker that went silent.
- ``jobs.worker_id``: the worker that claimed the job's current attempt.
- ``jobs.dispatched_at``: when the job's caption message was last sent (NULL: at submit); the
  sweeper re-sends the message of a job queued longer than a grace period after it.
- ``idempotency_keys.lease_until``: an in-flight claim is held only while the request holding it
  keeps renewing this.

Runs on PostgreSQL and SQLite (batch mode there).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
    )
    op.create_index("ix_workers_last_seen", "workers", ["last_seen"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("worker_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("dispatched_at", TS, nullable=True))
        batch.create_index("ix_jobs_status_worker", ["status", "worker_id"])
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("lease_until", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("lease_until")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_status_worker")
        batch.drop_column("dispatched_at")
        batch.drop_column("worker_id")
    op.drop_index("ix_workers_last_seen", table_name="workers")
    op.drop_table("workers")
