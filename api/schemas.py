"""Response bodies as OpenAPI documents them (docs/API.md describes each field).

These models are documentation and the contract the schema test checks real responses against;
the routes build their JSON with :mod:`jobs.render`, so the models describe that JSON exactly and
allow fields added later (``extra="allow"``), as clients are told to ignore unknown fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.requests import EventType

_OPEN = ConfigDict(extra="allow")

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
BatchStatus = Literal["queued", "running", "completed", "canceled"]
Time = str  # RFC 3339, UTC, microseconds: 2026-12-04T09:30:00.000000Z


class FieldError(BaseModel):
    model_config = _OPEN
    loc: list[str | int] = Field(description="Where: field names and list indexes")
    msg: str
    code: str | None = Field(None, description="A specific code, when there is one")


class Problem(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    model_config = _OPEN
    type: str = Field(description="urn:captionq:problem:<code>")
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable snake_case error code (docs/API.md lists them)")
    errors: list[FieldError] | None = Field(None, description="422 only: every invalid field")


class JobError(BaseModel):
    model_config = _OPEN
    code: str
    message: str
    retryable: bool


class Round(BaseModel):
    model_config = _OPEN
    prompt: str
    text: str
    finish_reason: str | None = None


class JobOutput(BaseModel):
    model_config = _OPEN
    text: str
    rounds: list[Round]
    boxes: list[Any] | None = Field(None, description="task=grounding: boxes found in the text")


class Job(BaseModel):
    model_config = _OPEN
    id: str = Field(description="job_…")
    object: Literal["job"]
    status: JobStatus
    batch_id: str | None
    custom_id: str | None
    request: dict[str, Any] = Field(
        description="The normalised JobRequest (defaults filled in); a data: URI is shown as "
                    "data:<mime>;sha256=<hex>;bytes=<n>")
    output: JobOutput | None
    partial_text: str | None = Field(description="Text so far while running; null otherwise")
    error: JobError | None
    attempts: int
    metrics: dict[str, Any] | None
    metadata: dict[str, Any]
    priority: int
    cancel_requested: bool
    created_at: Time
    started_at: Time | None
    finished_at: Time | None
    expires_at: Time | None


class JobList(BaseModel):
    model_config = _OPEN
    object: Literal["list"]
    data: list[Job]
    next_cursor: str | None


class BatchCounts(BaseModel):
    model_config = _OPEN
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int


class BatchWebhook(BaseModel):
    model_config = _OPEN
    url: str
    events: list[EventType] | None


class Batch(BaseModel):
    model_config = _OPEN
    id: str = Field(description="bat_…")
    object: Literal["batch"]
    status: BatchStatus
    counts: BatchCounts
    output_url: str | None
    metadata: dict[str, Any]
    webhook: BatchWebhook | None
    created_at: Time
    finished_at: Time | None
    cancel_requested_at: Time | None


class BatchList(BaseModel):
    model_config = _OPEN
    object: Literal["list"]
    data: list[Batch]
    next_cursor: str | None


class BatchResultLine(BaseModel):
    """One line of ``GET /v1/batches/{id}/results`` (NDJSON) and of ``results.jsonl``."""

    model_config = _OPEN
    job_id: str
    custom_id: str | None
    status: JobStatus
    output: JobOutput | None
    error: JobError | None
    metadata: dict[str, Any]


class WebhookAttempt(BaseModel):
    model_config = _OPEN
    attempted_at: Time
    status_code: int | None
    error: str | None
    duration_ms: int | float | None


class WebhookMessage(BaseModel):
    model_config = _OPEN
    id: str = Field(description="msg_… (the webhook-id header)")
    object: Literal["webhook_message"]
    type: EventType
    url: str
    job_id: str | None
    batch_id: str | None
    status: Literal["pending", "delivered", "failed"]
    attempt_count: int
    next_attempt_at: Time | None
    created_at: Time
    delivered_at: Time | None
    attempts: list[WebhookAttempt]


class WebhookMessageList(BaseModel):
    model_config = _OPEN
    object: Literal["list"]
    data: list[WebhookMessage]
    next_cursor: str | None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """``/readyz``: ``status`` and one entry per dependency (``database``, ``broker``,
    ``workers``); 503 while any is down."""

    model_config = _OPEN
    status: str


MODELS: tuple[type[BaseModel], ...] = (
    Problem, Job, JobList, Batch, BatchList, BatchResultLine, WebhookMessage, WebhookMessageList,
    Health, Readiness,
)
