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


class TasksOutput(BaseModel):
    """The output of a job with ``tasks``: each task's output by its name, what a job with that
    task's fields alone would output."""

    model_config = _OPEN
    tasks: dict[str, JobOutput]


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
    output: JobOutput | TasksOutput | None
    partial_text: str | None = Field(description="Text so far while running (a job with tasks: the "
                                                  "first chat task's); null otherwise")
    error: JobError | None
    attempts: int
    metrics: dict[str, Any] | None = Field(
        description="tiles, frames, input_tokens, output_tokens, vision_tiles (tiles the vision "
                    "tower encoded for the job), model, finish_reason, seconds; a job with tasks "
                    "adds tasks: {name: {input_tokens, output_tokens, finish_reason}}")
    metadata: dict[str, Any]
    priority: int
    model: str | None = Field(
        description="The model the job runs on (a name from GET /v1/models; null for jobs stored "
                    "before jobs named a model)")
    model_revision: str | None = Field(
        description="The checkpoint revision of the worker that claimed the job (a hub commit, or "
                    "sha256:<16 hex>); null until a worker claimed it")
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
    output: JobOutput | TasksOutput | None
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
    vision_tiles: int = Field(0, description="Tiles through the vision tower")
    vision_reused_tiles: int = Field(
        0, description="Tiles whose image features were reused (several tasks, rounds or grounding "
                       "phrases of one job) instead of running the vision tower again")
    prefix_reused_tokens: int = Field(
        0, description="Prompt tokens (system message and image) whose keys and values were reused "
                       "from another request of the same job instead of being computed again")


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
    requests_per_s: float | None = Field(
        None, description="Requests (rounds) finished per second over the interval")
    free_slots: int | None = Field(None, description="slots - running_jobs (at least 0)")
    served_model: str | None = Field(None, description="The model it serves, as GET /v1/models names it")
    model_revision: str | None = Field(None, description="The revision of the checkpoint it serves")
    checkpoint: str | None = Field(None, description="The checkpoint it serves, as configured")
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


class ModelWorker(BaseModel):
    model_config = _OPEN
    id: str
    status: Literal["live"]
    model_revision: str | None
    last_heartbeat_at: Time
    slots: int | None
    running_jobs: int
    free_slots: int | None
    tokens_per_s: float | None
    requests_per_s: float | None
    batch_occupancy: float | None


class Model(BaseModel):
    """One served model (``GET /v1/models``): a registry entry, the live workers serving it and
    its queue."""

    model_config = _OPEN
    id: str = Field(description="The name jobs give as `model`")
    object: Literal["model"]
    default: bool = Field(description="The model of a job that names none")
    checkpoint: str = Field(description="Its checkpoint (a folder or a hub id), as configured")
    limits: dict[str, int] = Field(description="Its caps: max_tiles, max_new_tokens, max_context_tokens")
    queue: str = Field(description="Its broker queue, gpu.<model>")
    status: Literal["available", "no_live_workers"] = Field(
        description="no_live_workers: no worker serves it now; its jobs wait, queued, until one starts")
    live_workers: int
    slots: int = Field(description="Decode slots over its live workers")
    free_slots: int = Field(description="Slots not taken by a running job")
    revisions: list[str] = Field(description="The checkpoint revisions its live workers serve")
    queued_jobs: int = Field(description="Its jobs queued (every tenant's; a batch's not yet dispatched too)")
    running_jobs: int
    queue_messages: int | None = Field(description="Messages waiting in its broker queue; null: unknown")
    oldest_queued_at: Time | None
    oldest_queued_seconds: float | None = Field(description="Age of its oldest queued job")
    estimated_wait_seconds: float | None = Field(
        description="Rough: queued jobs over the requests/s its workers finished lately; 0 when the "
                    "free slots take every queued job; null without a live worker or a rate")
    workers: list[ModelWorker]


class ModelList(BaseModel):
    model_config = _OPEN
    object: Literal["list"]
    default_model: str
    data: list[Model]
class Queue(BaseModel):
    """One queue (``GET /v1/queues``): what an autoscaler scales workers on."""

    model_config = _OPEN
    object: Literal["queue"]
    name: str = Field(description="gpu.<model> (a served model's caption jobs) or io")
    model: str | None = Field(description="The model of a gpu queue; null for io")
    messages: int | None = Field(description="Messages waiting in the broker (null: the broker cannot say)")
    waiting: int = Field(description="gpu.<model>: jobs queued in SQL (a batch's jobs wait there until "
                                     "dispatched); io: webhook messages due for an attempt")
    oldest_age_seconds: float = Field(description="Age of the oldest waiting job or due webhook "
                                                  "message (0: none)")


class QueueList(BaseModel):
    model_config = _OPEN
    object: Literal["list"]
    data: list[Queue]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """``/readyz``: ``status`` and one entry per dependency (``database``, ``broker``,
    ``workers``); 503 while any is down."""

    model_config = _OPEN
    status: str


Scope = Literal["submit", "read", "admin"]


class ApiKey(BaseModel):
    """An API key as the admin API shows it: never its secret."""

    model_config = _OPEN
    id: str = Field(description="key_… (the key itself reads cq_<id>_<secret>)")
    object: Literal["api_key"]
    tenant: str
    name: str | None
    scopes: list[Scope] = Field(description="submit: POST routes; read: GET routes; admin: /v1/keys")
    created_at: Time
    last_used_at: Time | None = Field(description="Last use, to within a minute; null: never used")
    revoked_at: Time | None


class KeyRequest(BaseModel):
    """``POST /v1/keys``: both fields optional."""

    model_config = ConfigDict(extra="forbid")
    scopes: list[Scope] | None = Field(None, min_length=1, description="Default: submit and read")
    name: str | None = Field(None, max_length=200, description="A label for the key")


class CreatedApiKey(ApiKey):
    api_key: str = Field(description="The key: shown in this answer only, a hash is stored")


class ApiKeyList(BaseModel):
    model_config = _OPEN
    object: Literal["list"]
    data: list[ApiKey]


class UsageFigures(BaseModel):
    model_config = _OPEN
    jobs: int = Field(description="Jobs that ended (succeeded, failed or canceled)")
    images: int
    frames: int = Field(description="Video frames")
    tiles: int = Field(description="448x448 tiles the vision encoder saw")
    input_tokens: int
    output_tokens: int
    gpu_seconds: float = Field(description="Time the jobs held an engine slot")


class UsageRow(UsageFigures):
    day: str | None = Field(None, description="group_by=day: the UTC day, YYYY-MM-DD")
    key: str | None = Field(None, description="group_by=key: the API key id (null: no key)")
    model: str | None = Field(None, description="group_by=model: the model (null: never ran)")


class Usage(BaseModel):
    model_config = _OPEN
    object: Literal["usage"]
    from_: str = Field(alias="from", description="First UTC day")
    to: str = Field(description="Last UTC day, included")
    group_by: Literal["day", "key", "model"] | None
    data: list[UsageRow] = Field(description="One row per group, in order; empty without group_by")
    total: UsageFigures


MODELS: tuple[type[BaseModel], ...] = (
    Problem, Job, JobList, Batch, BatchList, BatchResultLine, WebhookMessage, WebhookMessageList,
    Worker, WorkerList, Model, ModelList, Queue, QueueList, Health, Readiness, ApiKey, CreatedApiKey,
    ApiKeyList, Usage,
)
