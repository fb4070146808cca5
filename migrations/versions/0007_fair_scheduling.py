"""Weighted fair scheduling of the GPU queues (jobs.fair, jobs.fair_dispatch).

- ``tenants.weight``: a tenant's share of GPU slots (NULL: ``fair_default_weight``).
- ``fair_queues``: per queue, the fair-share clock; its row is the dispatch lock.
- ``fair_tenants``: per queue and tenant, the finish tag of the tenant's last dispatched job.
- ``ix_jobs_undispatched``, ``ix_jobs_dispatched_queued``: partial indexes on queued jobs still
  waiting in SQL / whose message waits in the broker.
- A single job's message is sent at submission; its ``dispatched_at`` is now set there too, so
  queued single jobs from before are stamped with their ``created_at``.

Runs on PostgreSQL and SQLite (batch mode there; both have partial indexes).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
UNDISPATCHED = sa.text("status = 'queued' AND dispatched_at IS NULL")
DISPATCHED_QUEUED = sa.text("status = 'queued' AND dispatched_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("weight", sa.Float(), nullable=True))
    op.create_table(
        "fair_queues",
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("vtime", sa.Float(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("queue", name="pk_fair_queues"),
    )
    op.create_table(
        "fair_tenants",
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("finish", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name="fk_fair_tenants_tenant_id_tenants"),
        sa.PrimaryKeyConstraint("queue", "tenant_id", name="pk_fair_tenants"),
    )
    op.execute("UPDATE jobs SET dispatched_at = created_at "
               "WHERE status = 'queued' AND dispatched_at IS NULL AND batch_id IS NULL")
    op.create_index("ix_jobs_undispatched", "jobs", ["tenant_id", "model", "priority", "created_at", "seq"],
                    postgresql_where=UNDISPATCHED, sqlite_where=UNDISPATCHED)
    op.create_index("ix_jobs_dispatched_queued", "jobs", ["model", "tenant_id"],
                    postgresql_where=DISPATCHED_QUEUED, sqlite_where=DISPATCHED_QUEUED)


def downgrade() -> None:
    op.drop_index("ix_jobs_dispatched_queued", table_name="jobs")
    op.drop_index("ix_jobs_undispatched", table_name="jobs")
    op.drop_table("fair_tenants")
    op.drop_table("fair_queues")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("weight")
