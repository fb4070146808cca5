"""The one settings class. Built once where a process starts, then passed down.

Nothing below an entry point reads ``os.environ``: functions take a ``Settings`` argument.
Each field is read from ``CAPTIONQ_<FIELD NAME IN CAPITALS>`` (a ``.env`` file is read too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.registry import ModelSpec, Registry, build_registry, parse_entry

DEFAULT_WEBHOOK_SCHEDULE = "5,300,1800,7200,18000,36000,36000"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CAPTIONQ_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- storage of jobs -------------------------------------------------------------------
    database_url: str = "sqlite:///./captionq.db"
    # None means the local-mode broker (kombu's filesystem transport under ``data_dir``).
    broker_url: str | None = None
    # Redis used for live events (SSE, partial text). Defaults to the broker when that is Redis;
    # without Redis (local mode) events are read from the database instead.
    redis_url: str | None = None
    # A pooled PostgreSQL connection idle for longer than this is pinged before use (a dead one is
    # replaced, not handed out); one used more recently goes straight to work. 0 = ping on every
    # checkout. See core.db.ping_when_idle for why 1 s loses nothing that pinging always saves.
    db_ping_idle_seconds: float = 1.0
    # PostgreSQL connections per process (and engine): kept open, and opened beyond them under
    # load. Every API, worker and sweeper process counts against the server's max_connections.
    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(20, ge=0)
    data_dir: Path = Path("./.captionq")
    local_mode: bool = False

    # --- the model ---------------------------------------------------------------------------
    model: str = "OpenGVLab/InternVL2-8B"
    model_name: str | None = None  # reported name; defaults to the checkpoint's folder or hub id
    # The model registry (core/registry.py): a JSON object of name -> checkpoint, or name ->
    # {"checkpoint": ..., "max_tiles": ..., "max_new_tokens": ..., "max_context_tokens": ...}.
    # Unset: CAPTIONQ_MODEL is the one model. ``default_model``: what a request without
    # ``model`` gets (unset: the first entry). ``worker_model``: the entry a GPU worker serves
    # (``captionq worker --model``; unset: the default).
    models: dict[str, Any] | None = None
    default_model: str | None = None
    worker_model: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    quantization: Literal["none", "8bit", "4bit"] = "none"
    # The model's context in tokens. None: the checkpoint's own (config.json's
    # max_position_embeddings; the API reads it, with the tokenizer, from the checkpoint's data
    # files). A number caps it: the API refuses longer requests at submission (422
    # context_too_long) and a worker gives its engine no more than this.
    max_context_tokens: int | None = Field(None, ge=1)
    torch_threads: int | None = None
    # A GPU worker's engine thread gives up the GIL at every torch call (each kernel launch) and
    # must win it back; a thread running Python meanwhile keeps it up to this interval (Python's
    # default is 5 ms, against a few µs per launch). Applied by a worker whose model runs on an
    # accelerator; 0 keeps Python's default. See worker/runtime.py.
    gil_switch_interval_ms: float = Field(0.2, ge=0)
    # Cross-job batching. A request reaching an idle engine starts at once; requests arriving
    # while a batch runs form the next batch. ``batch_wait_ms`` applies only under load (requests
    # were already waiting when the last batch ended): the engine then waits up to that long for
    # more companions before running fewer than ``batch_max_requests``. A lone job never waits.
    batch_max_requests: int = 16
    batch_max_tokens: int = 32768
    batch_wait_ms: int = 20
    batching: bool = True
    # ``continuous``: requests join the running decode batch at step boundaries and a finished
    # row's slot is reused at once (models.continuous); ``static``: batches form, run to their
    # last token and only then take the next requests (models.batcher). ``batch_max_requests``
    # is the number of decode slots and ``batch_max_tokens`` the KV-cache budget in either mode.
    batch_mode: Literal["continuous", "static"] = "continuous"
    # Run the engine (model + batcher) in its own process, spawned by the worker, out of reach of
    # the task threads' GIL (worker/engine_client.py). None: on for an accelerator, off for
    # device ``cpu`` (measured in docs/ARCHITECTURE.md, "The engine process").
    engine_process: bool | None = None
    vision_chunk_tiles: int = 64
    # image features kept for the later answers of a job with several tasks, rounds or grounding
    # phrases (models.vision_cache), in tiles; past it the least recently used go
    vision_cache_tiles: int = 256
    # and the keys and values of their prompts' shared start (system message + image tokens), in
    # prompt positions (models.vision_cache.PrefixCache)
    prefix_cache_tokens: int = 16384

    # --- media ---------------------------------------------------------------------------
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_allowed_buckets: list[str] = Field(default_factory=list)  # empty = any bucket
    media_root: Path = Path("./media")
    # Where the OpenAI facade keeps uploaded batch input files: an ``s3://bucket/prefix/`` that
    # every API host shares. Unset: ``<data_dir>/openai-files`` (one host only).
    openai_files_url: str | None = None
    allow_private_urls: bool = False
    # Resolve http(s) host names when a job is submitted (refusing names with private addresses
    # early). Off by default: the fetch itself always checks the address it connects to.
    resolve_urls_at_submission: bool = False
    max_media_bytes: int = 200 * 1024 * 1024
    max_data_uri_bytes: int = 20 * 1024 * 1024
    fetch_timeout_seconds: float = 30.0

    # --- jobs ----------------------------------------------------------------------------
    max_attempts: int = 3
    job_soft_time_limit: int = 600
    job_hard_time_limit: int = 900
    default_ttl_seconds: int = 86400
    max_request_bytes: int = 32 * 1024 * 1024
    max_batch_jobs_inline: int = 10_000
    # A bulk batch's outputs are written in parts of this many consecutive items (its jobs' seq),
    # each part once all its jobs have ended; fixed per batch at submission.
    batch_part_rows: int = Field(1000, ge=1, le=1_000_000)
    sweep_interval_seconds: float = 10.0
    # At most about this many caption messages of batch jobs wait in a GPU queue of the broker
    # at once, all tenants together; the rest wait in SQL, where the fair dispatcher
    # (jobs.fair_dispatch) picks which enter next as jobs start (each claim and each sweep
    # refills it). None: the slots of the live GPU workers (at least ``dispatch_window_min``),
    # so a newcomer's job waits about one batch's running time behind a backlog; 0: no limit,
    # every job at submission (no fairness).
    dispatch_window: int | None = Field(None, ge=0)
    dispatch_window_min: int = Field(16, ge=1)
    # Fair scheduling (jobs.fair): a tenant's share of GPU slots when its ``weight`` is unset, and
    # how long a job waits to rank one priority level higher within its tenant (0: no aging).
    fair_default_weight: float = Field(1.0, gt=0)
    fair_aging_seconds: float = Field(60.0, ge=0)
    outbox_grace_seconds: float = 30.0
    # A job still ``running`` this long after job_hard_time_limit has lost its worker: the sweeper
    # requeues it (or fails it with ``worker_lost`` once max_attempts deliveries are used).
    stuck_grace_seconds: float = 120.0
    # Every GPU worker refreshes its heartbeat this often; one silent for worker_dead_seconds is
    # gone: the sweeper requeues its running jobs (within about worker_dead_seconds + one sweep).
    heartbeat_seconds: float = 5.0
    worker_dead_seconds: float = 20.0
    # A job still queued this long after its caption message was sent may have lost the message
    # (a broker restarted without persistence, a worker killed between taking it and claiming
    # it): the sweeper sends it again. Duplicates are harmless (the claim is conditional).
    queued_resend_seconds: float = 30.0
    # How long Idempotency-Key records are kept (API.md: 24 h).
    idempotency_ttl_seconds: int = 86400

    # --- webhooks ------------------------------------------------------------------------
    webhook_retry_schedule: str = DEFAULT_WEBHOOK_SCHEDULE
    webhook_timeout_seconds: float = 10.0
    webhook_secret_grace_seconds: int = 86400

    # --- API -----------------------------------------------------------------------------
    auth: Literal["required", "disabled"] = "required"
    # How long an API process trusts a verified key without reading the database again: a
    # revoked key (or a changed plan or scope) takes effect within this time. At most 30 s.
    auth_cache_seconds: float = Field(30.0, ge=0, le=30)

    # --- plans: rate limits and quotas (the defaults for tenants without a plan) -----------
    # Token buckets on every POST: per tenant and per API key (requests per second, burst).
    # Kept in Redis (one atomic script per request, shared by every API process); without Redis
    # (local mode) in the API process. ``rate_limits=False`` turns them off.
    rate_limits: bool = True
    # How long a POST waits for Redis's answer before it goes through unlimited (logged).
    rate_limit_timeout_seconds: float = Field(0.5, gt=0)
    default_requests_per_second: float = Field(100.0, gt=0)
    default_burst: int = Field(200, ge=1)
    default_key_requests_per_second: float | None = Field(None, gt=0)  # None: as the tenant
    default_key_burst: int | None = Field(None, ge=1)
    # Queued + running jobs per tenant (a batch counts every job); None: no limit.
    default_max_jobs_in_flight: int | None = Field(None, ge=1)
    # Monthly quotas per tenant (UTC calendar month); None: no limit.
    default_monthly_images: int | None = Field(None, ge=0)
    default_monthly_tokens: int | None = Field(None, ge=0)
    default_monthly_gpu_seconds: float | None = Field(None, ge=0)
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_json: bool = False
    # Signs the web dashboard's session cookies. Unset: a random secret kept in
    # ``data_dir/dashboard-session.key`` (shared by the API processes of one host; set it when
    # several hosts serve the API behind one address).
    session_secret: str | None = Field(None, repr=False)
    dashboard_session_hours: float = Field(12.0, gt=0)

    # --- worker observability --------------------------------------------------------------
    # ``captionq worker`` serves Prometheus metrics (/metrics) and a health probe (/healthz) on
    # these ports when set (the --metrics-port / --health-port options override them), bound to
    # ``worker_probe_host`` (0.0.0.0 in a container, so that Prometheus can scrape it).
    worker_metrics_port: int | None = Field(None, ge=0, le=65535)
    worker_health_port: int | None = Field(None, ge=0, le=65535)
    worker_probe_host: str = "127.0.0.1"
    # Celery task events (what Flower and ``celery events`` show): ``io`` sends them from every
    # worker that consumes the io queue, ``all`` from gpu workers too, ``off`` from none.
    task_events: Literal["off", "io", "all"] = "io"

    @field_validator("s3_allowed_buckets", mode="before")
    @classmethod
    def _split_buckets(cls, v: object) -> object:
        if isinstance(v, str):
            return [b.strip() for b in v.split(",") if b.strip()]
        return v

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_schedule(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if not parts or any(float(p) < 0 for p in parts):
            raise ValueError("must be a comma-separated list of non-negative seconds")
        return ",".join(parts)

    @field_validator("models")
    @classmethod
    def _check_models(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for name, value in (v or {}).items():
            parse_entry(name, value)  # a bad entry is named here, as CAPTIONQ_MODELS's error
        return v

    @model_validator(mode="after")
    def _registry_is_valid(self) -> Settings:
        registry = self.registry  # raises ValueError with what is wrong
        if self.worker_model is not None and registry.resolve(self.worker_model) is None:
            raise ValueError(f"CAPTIONQ_WORKER_MODEL={self.worker_model!r} is not a served model "
                             f"({', '.join(registry.names)})")
        return self

    @model_validator(mode="after")
    def _auth_only_disabled_locally(self) -> Settings:
        if self.auth == "disabled" and not self.local_mode:
            raise ValueError("CAPTIONQ_AUTH=disabled is only allowed in local mode (captionq up)")
        return self

    # --- derived values ------------------------------------------------------------------
    @property
    def sqlalchemy_url(self) -> str:
        """``postgresql://`` means psycopg 3 here."""
        url = self.database_url
        if url.startswith("postgresql://"):
            return "postgresql+psycopg://" + url[len("postgresql://") :]
        if url.startswith("postgres://"):
            return "postgresql+psycopg://" + url[len("postgres://") :]
        return url

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def uses_local_broker(self) -> bool:
        return self.effective_broker_url.startswith("filesystem://")

    @property
    def events_redis_url(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        broker = self.effective_broker_url
        return broker if broker.startswith(("redis://", "rediss://")) else None

    @property
    def webhook_schedule_seconds(self) -> list[float]:
        return [float(p) for p in self.webhook_retry_schedule.split(",")]

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def registry(self) -> Registry:
        """The served models (core/registry.py), from ``models`` / ``default_model`` / ``model``."""
        return build_registry(self.models, self.default_model, checkpoint=self.model,
                              legacy_name=self.model_name, max_context_tokens=self.max_context_tokens)

    def model_spec(self, name: str | None = None) -> ModelSpec:
        """The registry entry ``name`` (default: this worker's, else the default model)."""
        spec = self.registry.resolve(name or self.worker_model)
        if spec is None:
            raise ValueError(f"{name!r} is not a served model ({', '.join(self.registry.names)})")
        return spec

    def for_model(self, name: str | None = None) -> Settings:
        """These settings for a process that runs model ``name`` (see :meth:`model_spec`): its
        checkpoint, its context cap, and ``worker_model`` = its registry name. The engine's
        reported name (``model_name``, a job's ``metrics.model``) stays the checkpoint's own
        in a registry: one ``CAPTIONQ_MODEL_NAME`` cannot name several models."""
        spec = self.model_spec(name)
        context = spec.max_context_tokens if spec.max_context_tokens is not None else self.max_context_tokens
        reported = None if self.models else self.model_name
        return self.model_copy(update={"model": spec.checkpoint, "model_name": reported,
                                       "max_context_tokens": context, "worker_model": spec.name})


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and ``.env``); only entry points call this."""
    return Settings(**overrides)  # type: ignore[arg-type]
