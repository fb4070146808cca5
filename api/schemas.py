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
BatchStatus = Literal["queued", "running", "completed", "canceled", "expired"]
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
    source: dict[str, Any] | None = Field(None, description="The batch's source, as submitted")
    output_formats: list[Literal["jsonl", "parquet", "sidecar"]] | None = Field(
        None, description="Output formats written under output_url while the batch runs")
    expires_at: Time | None = Field(None, description="End of the completion window")
    expired_at: Time | None = Field(None, description="When the completion window ended the batch")
    resume_from: str | None = Field(None, description="The batch whose succeeded items were skipped")


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


class EngineCounters(BaseModel):
    """A worker engine's counters since it started (``models.batcher.BatcherStats``)."""

    model_config = _OPEN
    slots: int = Field(description="Decode rows the engine runs at most at once")
    kv_budget_tokens: int = Field(description="KV-cache positions it may hold at once")
    tokens_generated: int
    decode_steps: int
    rows_stepped: int = Field(description="Sum over decoding steps of the rows each ran")
    busy_seconds: float = Field(description="Time spent running the model")
    requests: int
    batches: int


class Worker(BaseModel):
    """One GPU worker process (``GET /v1/workers``). Rates are over its last heartbeat interval
    (``window_seconds``); null until it has sent two heartbeats with statistics."""

    model_config = _OPEN
    id: str = Field(description="hostname:pid:random, as the worker registered")
    object: Literal["worker"]
    status: Literal["live", "dead"] = Field(
        description="dead: no heartbeat for worker_dead_seconds (its jobs are requeued; the row goes)")
    model: str | None
    started_at: Time
    last_heartbeat_at: Time
    slots: int | None = Field(description="Decode slots (requests decoded at once)")
    kv_budget_tokens: int | None = Field(description="KV-cache budget in tokens")
    tokens_per_s: float | None = Field(description="Tokens generated per second over the interval")
    batch_occupancy: float | None = Field(
        description="Mean rows per decoding step / slots over the interval (0..1); null: no step ran")
    busy_fraction: float | None = Field(description="Share of the interval spent running the model")
    window_seconds: float | None = Field(description="The interval the rates are over")
    running_jobs: int = Field(description="Jobs (of any tenant) this worker is running now")
    engine: EngineCounters | None = Field(description="The counters the rates come from")


class WorkerTotals(BaseModel):
    model_config = _OPEN
    live_workers: int
    slots: int
    kv_budget_tokens: int
    tokens_per_s: float
    running_jobs: int


class WorkerList(BaseModel):
    model_config = _OPEN
    object: Literal["list"]
    data: list[Worker]
    totals: WorkerTotals = Field(description="Sums over the live workers")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """``/readyz``: ``status`` and one entry per dependency (``database``, ``broker``,
    ``workers``); 503 while any is down."""

    model_config = _OPEN
    status: str


MODELS: tuple[type[BaseModel], ...] = (
    Problem, Job, JobList, Batch, BatchList, BatchResultLine, WebhookMessage, WebhookMessageList,
    Worker, WorkerList, Health, Readiness,
)
