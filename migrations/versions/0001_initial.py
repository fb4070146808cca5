"""Initial schema: tenants, API keys, batches, jobs, outbox, webhook messages and attempts,
idempotency keys.

Types are spelled out here (not imported from the models) so this revision never changes when
the models do. Runs on PostgreSQL and SQLite.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("webhook_secret", sa.String(200), nullable=False),
        sa.Column("previous_webhook_secret", sa.String(200), nullable=True),
        sa.Column("previous_secret_expires_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        _tenant_fk("api_keys"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])

    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("canceled", sa.Integer(), nullable=False),
        sa.Column("output_url", sa.Text(), nullable=True),
        sa.Column("metadata", JSON, nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_events", JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("cancel_requested_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("finalized_at", TS, nullable=True),
        _tenant_fk("batches"),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
    )
    op.create_index("ix_batches_tenant_created", "batches", ["tenant_id", "created_at", "id"])
    op.create_index(
        "ix_batches_tenant_status_created", "batches", ["tenant_id", "status", "created_at", "id"]
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("batch_id", sa.String(40), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("custom_id", sa.String(256), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("request", JSON, nullable=False),
        sa.Column("output", JSON, nullable=True),
        sa.Column("partial_text", sa.Text(), nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("metadata", JSON, nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_events", JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        _tenant_fk("jobs"),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_jobs_batch_id_batches", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant_id", "created_at", "id"])
    op.create_index("ix_jobs_tenant_status_created", "jobs", ["tenant_id", "status", "created_at", "id"])
    op.create_index("ix_jobs_tenant_batch_created", "jobs", ["tenant_id", "batch_id", "created_at", "id"])
    op.create_index("ix_jobs_tenant_custom_created", "jobs", ["tenant_id", "custom_id", "created_at", "id"])
    op.create_index("uq_jobs_batch_seq", "jobs", ["batch_id", "seq"], unique=True)
    op.create_index("uq_jobs_batch_custom", "jobs", ["batch_id", "custom_id"], unique=True)
    op.create_index("ix_jobs_status_expires", "jobs", ["status", "expires_at"])
    op.create_index("ix_jobs_status_started", "jobs", ["status", "started_at"])

    op.create_table(
        "outbox",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("args", JSON, nullable=False),
        sa.Column("queue", sa.String(50), nullable=False),
        sa.Column("task_id", sa.String(60), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"])

    op.create_table(
        "webhook_messages",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("batch_id", sa.String(40), nullable=True),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _tenant_fk("webhook_messages"),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_messages"),
    )
    op.create_index(
        "ix_webhook_messages_tenant_job", "webhook_messages", ["tenant_id", "job_id", "created_at", "id"]
    )
    op.create_index(
        "ix_webhook_messages_tenant_batch", "webhook_messages",
        ["tenant_id", "batch_id", "created_at", "id"],
    )
    op.create_index("ix_webhook_messages_status_next", "webhook_messages", ["status", "next_attempt_at"])

    op.create_table(
        "webhook_attempts",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(40), nullable=False),
        sa.Column("attempted_at", TS, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"], ["webhook_messages.id"],
            name="fk_webhook_attempts_message_id_webhook_messages", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_attempts"),
    )
    op.create_index("ix_webhook_attempts_message_id", "webhook_attempts", ["message_id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("endpoint", sa.String(100), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("resource_id", sa.String(40), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        _tenant_fk("idempotency_keys"),
        sa.PrimaryKeyConstraint("tenant_id", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    for table in (
        "idempotency_keys", "webhook_attempts", "webhook_messages", "outbox", "jobs", "batches",
        "api_keys", "tenants",
    ):
        op.drop_table(table)
