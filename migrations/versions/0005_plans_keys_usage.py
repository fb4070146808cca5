"""Plans (rate limits and quotas), key scopes and last use, jobs in flight, daily usage.

- ``plans``: a tenant's limits: requests per second and burst for the tenant and for each of its
  keys, jobs in flight, monthly images / tokens / GPU seconds (NULL: no limit).
- ``tenants.plan``: the tenant's plan (NULL: the defaults in settings);
  ``tenants.jobs_in_flight``: queued + running jobs, moved in the same transaction as each
  submission and each terminal transition (backfilled here).
- ``api_keys.scopes`` (space-separated ``submit read admin``; existing keys keep every scope),
  ``api_keys.name`` (a label), ``api_keys.last_used_at`` (written at most once a minute).
- ``jobs.api_key_id``: the key that submitted the job (usage per key).
- ``usage_daily``: per tenant, UTC day, key and model, the totals of the jobs that ended.

Runs on PostgreSQL and SQLite (batch mode there).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
ALL_SCOPES = "submit read admin"


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("requests_per_second", sa.Float(), nullable=False),
        sa.Column("burst", sa.Integer(), nullable=False),
        sa.Column("key_requests_per_second", sa.Float(), nullable=True),
        sa.Column("key_burst", sa.Integer(), nullable=True),
        sa.Column("max_jobs_in_flight", sa.Integer(), nullable=True),
        sa.Column("monthly_images", sa.BigInteger(), nullable=True),
        sa.Column("monthly_tokens", sa.BigInteger(), nullable=True),
        sa.Column("monthly_gpu_seconds", sa.Float(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("plan", sa.String(64), nullable=True))
        batch.add_column(sa.Column("jobs_in_flight", sa.Integer(), nullable=False, server_default="0"))
        batch.create_foreign_key("fk_tenants_plan", "plans", ["plan"], ["name"], ondelete="SET NULL")
    op.execute(
        "UPDATE tenants SET jobs_in_flight = (SELECT count(*) FROM jobs WHERE jobs.tenant_id = tenants.id "
        "AND jobs.status IN ('queued', 'running'))"
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("scopes", sa.String(100), nullable=False, server_default=ALL_SCOPES))
        batch.add_column(sa.Column("name", sa.String(200), nullable=True))
        batch.add_column(sa.Column("last_used_at", TS, nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("api_key_id", sa.String(40), nullable=True))
    op.create_table(
        "usage_daily",
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("api_key_id", sa.String(40), nullable=False),  # '' for jobs without a key
        sa.Column("model", sa.String(200), nullable=False),  # '' when the job never ran
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("images", sa.BigInteger(), nullable=False),
        sa.Column("frames", sa.BigInteger(), nullable=False),
        sa.Column("tiles", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "day", "api_key_id", "model"),
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("api_key_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("name")
        batch.drop_column("scopes")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_constraint("fk_tenants_plan", type_="foreignkey")
        batch.drop_column("jobs_in_flight")
        batch.drop_column("plan")
    op.drop_table("plans")
