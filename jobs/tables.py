"""The SQL tables (SQLAlchemy 2 typed models). Migrations in ``migrations/`` create them.

Every list filter has an index that starts with ``tenant_id`` and ends with
``(created_at, id)``, the keyset the lists page through newest first.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, JSONType, UTCDateTime, utcnow

# Auto-increment keys: BIGINT on PostgreSQL; SQLite only auto-increments INTEGER PRIMARY KEY.
BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Space-separated scopes of an API key: ``submit`` (POST), ``read`` (GET), ``admin`` (keys, usage).
ALL_SCOPES = "submit read admin"


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    webhook_secret: Mapped[str] = mapped_column(sa.String(200))
    # During a rotation webhooks are signed with both secrets until this one expires.
    previous_webhook_secret: Mapped[str | None] = mapped_column(sa.String(200))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The tenant's limits (``plans.name``); NULL: the defaults in settings (jobs/plans.py).
    plan: Mapped[str | None] = mapped_column(sa.ForeignKey("plans.name", ondelete="SET NULL"))
    # Queued + running jobs, moved in the transaction of each submission and terminal transition.
    jobs_in_flight: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    # Share of the GPU slots among tenants with waiting work (jobs.fair); NULL: the settings'
    # ``fair_default_weight``.
    weight: Mapped[float | None] = mapped_column(sa.Float)


class Plan(Base):
    """Rate limits and monthly quotas shared by the tenants on the plan (NULL: no limit)."""

    __tablename__ = "plans"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    requests_per_second: Mapped[float] = mapped_column(sa.Float)
    burst: Mapped[int] = mapped_column(sa.Integer)
    key_requests_per_second: Mapped[float | None] = mapped_column(sa.Float)
    key_burst: Mapped[int | None] = mapped_column(sa.Integer)
    max_jobs_in_flight: Mapped[int | None] = mapped_column(sa.Integer)
    monthly_images: Mapped[int | None] = mapped_column(sa.BigInteger)
    monthly_tokens: Mapped[int | None] = mapped_column(sa.BigInteger)
    monthly_gpu_seconds: Mapped[float | None] = mapped_column(sa.Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64))  # sha256 hex of the secret part
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    scopes: Mapped[str] = mapped_column(sa.String(100), default=ALL_SCOPES, server_default=ALL_SCOPES)
    name: Mapped[str | None] = mapped_column(sa.String(200))
    # Written at most once a minute per key and API process (api/auth.py), never per request.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        sa.Index("ix_batches_tenant_created", "tenant_id", "created_at", "id"),
        sa.Index("ix_batches_tenant_status_created", "tenant_id", "status", "created_at", "id"),
        sa.Index("ix_batches_expires_unfinalized", "expires_at",
                 postgresql_where=sa.text("finalized_at IS NULL AND expires_at IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(sa.String(16))
    # Counters kept in the same transaction as each job transition: GET never counts rows.
    total: Mapped[int] = mapped_column(sa.Integer, default=0)
    queued: Mapped[int] = mapped_column(sa.Integer, default=0)
    running: Mapped[int] = mapped_column(sa.Integer, default=0)
    succeeded: Mapped[int] = mapped_column(sa.Integer, default=0)
    failed: Mapped[int] = mapped_column(sa.Integer, default=0)
    canceled: Mapped[int] = mapped_column(sa.Integer, default=0)
    output_url: Mapped[str | None] = mapped_column(sa.Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    webhook_url: Mapped[str | None] = mapped_column(sa.Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # All jobs ended (finished_at) / results written and batch.completed emitted (finalized_at).
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Bulk batches (jobs/sources, jobs/batch_outputs): the source echoed; the output formats
    # (NULL: v1, one results.jsonl at the end); the task names (Parquet columns); outputs are
    # written in parts of part_rows consecutive seq values, the first parts_done of them done.
    source: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    output_formats: Mapped[list[str] | None] = mapped_column(JSONType)
    task_names: Mapped[list[str] | None] = mapped_column(JSONType)
    part_rows: Mapped[int] = mapped_column(sa.Integer, default=1000, server_default="1000")
    parts_done: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    # The completion window's end; when the sweeper ended the batch at it (status expired).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resume_from: Mapped[str | None] = mapped_column(sa.String(40))


UNDISPATCHED = sa.text("status = 'queued' AND dispatched_at IS NULL")
DISPATCHED_QUEUED = sa.text("status = 'queued' AND dispatched_at IS NOT NULL")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        sa.Index("ix_jobs_tenant_status_created", "tenant_id", "status", "created_at", "id"),
        sa.Index("ix_jobs_tenant_batch_created", "tenant_id", "batch_id", "created_at", "id"),
        sa.Index("ix_jobs_tenant_custom_created", "tenant_id", "custom_id", "created_at", "id"),
        # Results stream in submission order; custom_id is unique within a batch.
        sa.Index("uq_jobs_batch_seq", "batch_id", "seq", unique=True),
        sa.Index("uq_jobs_batch_custom", "batch_id", "custom_id", unique=True),
        # The sweeper's scans: queued past TTL, running past the time budget.
        sa.Index("ix_jobs_status_expires", "status", "expires_at"),
        sa.Index("ix_jobs_status_started", "status", "started_at"),
        # The running jobs of a worker that went silent.
        sa.Index("ix_jobs_status_worker", "status", "worker_id"),
        # Per model: queue depth and the oldest queued job (GET /v1/models, the sweeper).
        sa.Index("ix_jobs_status_model_created", "status", "model", "created_at"),
        # The fair dispatcher's reads (jobs.fair_dispatch): each tenant's jobs still waiting in
        # SQL, per model and priority level oldest first, and the jobs whose message waits in the
        # broker, per model. Partial, so each holds only the rows it is about (a million-job backlog is not
        # counted on every dispatch).
        sa.Index("ix_jobs_undispatched", "tenant_id", "model", "priority", "created_at", "seq",
                 postgresql_where=UNDISPATCHED, sqlite_where=UNDISPATCHED),
        sa.Index("ix_jobs_dispatched_queued", "model", "tenant_id",
                 postgresql_where=DISPATCHED_QUEUED, sqlite_where=DISPATCHED_QUEUED),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(sa.ForeignKey("batches.id", ondelete="CASCADE"))
    seq: Mapped[int | None] = mapped_column(sa.Integer)  # line number within the batch (1-based)
    custom_id: Mapped[str | None] = mapped_column(sa.String(256))
    status: Mapped[str] = mapped_column(sa.String(16))
    priority: Mapped[int] = mapped_column(sa.SmallInteger, default=0)
    request: Mapped[dict[str, Any]] = mapped_column(JSONType)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    partial_text: Mapped[str | None] = mapped_column(sa.Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    # The effective webhook (the job's own, else the batch's job events).
    webhook_url: Mapped[str | None] = mapped_column(sa.Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The worker (``workers.id``) that claimed the current attempt; when its caption message was
    # last sent (NULL: at submit, ``created_at``), for the sweeper's re-send of lost messages.
    worker_id: Mapped[str | None] = mapped_column(sa.String(200))
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The registry name of the model the job runs on (core/registry.py; NULL: stored before jobs
    # named a model, the default model's) and the revision of the checkpoint that answered it
    # (set by the claim of the attempt that runs it).
    model: Mapped[str | None] = mapped_column(sa.String(64))
    model_revision: Mapped[str | None] = mapped_column(sa.String(80))
    # The API key that submitted the job (usage per key); NULL in local mode without keys.
    api_key_id: Mapped[str | None] = mapped_column(sa.String(40))
    # The submitting request's W3C trace context ({"traceparent": ...}; core.tracing): the worker
    # continues that trace. NULL when the request had none (tracing off, no client traceparent).
    trace_context: Mapped[dict[str, str] | None] = mapped_column(JSONType)


class Worker(Base):
    """A running GPU worker process; ``last_seen`` is its heartbeat (``jobs/heartbeats.py``)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int] = mapped_column(sa.Integer)
    model: Mapped[str | None] = mapped_column(sa.String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # the engine's counters and rates as of the last heartbeat (jobs.heartbeats.StatsWindow)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class FairQueue(Base):
    """A GPU queue's fair-share clock (jobs.fair.Clock.vtime). Its row is also what a dispatch
    locks, so two dispatchers of one queue (two sweepers, an API and a worker) take turns."""

    __tablename__ = "fair_queues"

    queue: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    vtime: Mapped[float] = mapped_column(sa.Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FairTenant(Base):
    """A tenant's finish tag in a queue's fair share (jobs.fair.Clock.finish)."""

    __tablename__ = "fair_tenants"

    queue: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    finish: Mapped[float] = mapped_column(sa.Float, default=0.0)


class Outbox(Base):
    """A Celery message to send after the transaction that wrote it commits.

    Deleted once published; the sweeper re-publishes rows older than the grace period.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(sa.String(100))
    args: Mapped[list[Any]] = mapped_column(JSONType)
    queue: Mapped[str] = mapped_column(sa.String(50))
    task_id: Mapped[str] = mapped_column(sa.String(60))
    priority: Mapped[int] = mapped_column(sa.SmallInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class WebhookMessage(Base):
    __tablename__ = "webhook_messages"
    __table_args__ = (
        sa.Index("ix_webhook_messages_tenant_job", "tenant_id", "job_id", "created_at", "id"),
        sa.Index("ix_webhook_messages_tenant_batch", "tenant_id", "batch_id", "created_at", "id"),
        sa.Index("ix_webhook_messages_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(sa.String(40))
    batch_id: Mapped[str | None] = mapped_column(sa.String(40))
    type: Mapped[str] = mapped_column(sa.String(40))
    url: Mapped[str] = mapped_column(sa.Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)  # the Job/Batch JSON ("data")
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(sa.Text)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        sa.ForeignKey("webhook_messages.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status_code: Mapped[int | None] = mapped_column(sa.Integer)
    error: Mapped[str | None] = mapped_column(sa.Text)
    duration_ms: Mapped[float | None] = mapped_column(sa.Float)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(
        sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(sa.String(100))
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16))  # in_flight | done
    resource_id: Mapped[str | None] = mapped_column(sa.String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # An in_flight claim belongs to its request only until this time; the request renews it
    # while it works, so a claim left by a crashed process is free again within seconds.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class UsageDaily(Base):
    """Totals of the jobs that ended, per tenant, UTC day, key and model; added to in the same
    transaction as each terminal transition (jobs/usage.py), so a job is counted exactly once."""

    __tablename__ = "usage_daily"

    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    api_key_id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # '' without a key
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)  # '' when it never ran
    jobs: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    images: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    frames: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    tiles: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    gpu_seconds: Mapped[float] = mapped_column(sa.Float, default=0.0)
