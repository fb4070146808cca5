"""Batches: submission (inline or a streamed JSONL manifest), cancel, results.

Submission runs in three phases so that no transaction is held while the manifest downloads and
nothing is held in memory per line:

1. read + validate (no database): each line is parsed, merged over ``defaults``, normalised, and
   written as one compact JSON line to a spool file (memory up to 8 MB, then disk); errors are
   collected with their location (``["manifest", line, …]`` or ``["jobs", index, …]``), up to
   ``MAX_ERRORS``, after which reading stops;
2. insert (one transaction, so a batch appears whole or not at all): the batch row, then the spool
   in chunks of ``CHUNK`` with bulk INSERTs of jobs and their outbox rows, counters set at the end;
3. publish the outbox rows after commit (the API does it in the background; a crash there is
   covered by the sweeper).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any, Literal, cast

import pydantic_core
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import tracing
from core.db import utcnow
from core.errors import BatchFinished, DuplicateCustomId, InvalidRequest, NotFound
from jobs import ids, outbox, storable
from jobs import transitions as tx
from jobs.admission import Admission, admit
from jobs.admission import precheck as admission_precheck
from jobs.requests import (
    JsonInt,
    RequestLimits,
    UrlChecker,
    Webhook,
    _check_metadata,
    check_defaults,
    error,
    merge_defaults,
    normalize_job_request,
    pydantic_errors,
)
from jobs.service import JobService
from jobs.sources import SourceSpec, parse_source
from jobs.states import ALL_EVENTS, CANCEL, DEFAULT_BATCH_EVENTS, BatchStatus, JobStatus
from jobs.tables import Batch, Job

log = logging.getLogger(__name__)

CHUNK = 1000
MAX_ERRORS = 100
# A batch at least this large refreshes the planner's statistics of the jobs table.
ANALYZE_AFTER = 5000
SPOOL_MEMORY = 8 * 1024 * 1024


OutputFormat = Literal["jsonl", "parquet", "sidecar"]


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    jobs: list[Any] | None = None
    manifest_url: str | None = None
    defaults: dict[str, Any] | None = None
    output_url: str | None = None
    webhook: Webhook | None = None
    metadata: dict[str, Any] | None = None
    skip_invalid: bool = False
    priority: JsonInt | None = Field(None, ge=0, le=9)  # extension: default priority of the batch's jobs
    model: str | None = None  # the model of the batch's jobs (a line's own ``model`` wins)
    # bulk batches (jobs/sources.py, jobs/batch_outputs.py, jobs/batch_retry.py)
    source: dict[str, Any] | None = None
    tasks: list[Any] | None = Field(None, min_length=1, max_length=64)
    output_formats: list[OutputFormat] | None = Field(None, min_length=1, max_length=3)
    completion_window: JsonInt | str | None = None
    resume_from: str | None = Field(None, max_length=40)


@dataclass
class BatchPlan:
    """The validated top level of a batch request (before its jobs are read)."""

    jobs: list[Any] | None
    manifest_url: str | None
    defaults: dict[str, Any] | None
    output_url: str | None
    webhook: dict[str, Any] | None
    metadata: dict[str, Any]
    skip_invalid: bool
    source: SourceSpec | None = None
    output_formats: list[str] | None = None
    task_names: list[str] | None = None
    completion_window: int | None = None
    resume_from: str | None = None


def plan_batch(raw: Any, checker: UrlChecker, max_inline: int) -> BatchPlan:
    """Validate everything but the jobs themselves."""
    if not isinstance(raw, dict):
        raise InvalidRequest("the body must be a JSON object", errors=[error([], "expected an object")])
    try:
        req = BatchRequest.model_validate(raw)
    except ValidationError as exc:
        schema_errs = pydantic_errors(exc, [])
        raise InvalidRequest(f"{len(schema_errs)} invalid field(s)", errors=schema_errs) from None
    errs: list[dict[str, Any]] = []
    if sum(x is not None for x in (req.jobs, req.manifest_url, req.source)) != 1:
        errs.append(error([], "give exactly one of 'jobs', 'manifest_url' and 'source'"))
    if req.jobs is not None and not req.jobs:
        errs.append(error(["jobs"], "a batch needs at least one job"))
    if req.jobs is not None and len(req.jobs) > max_inline:
        errs.append(error(["jobs"], f"at most {max_inline} jobs inline; use manifest_url for more"))
    manifest = output = None
    if req.manifest_url is not None:
        try:
            manifest = checker.manifest(req.manifest_url)
        except Exception as exc:
            errs.append(_code_error(exc, ["manifest_url"]))
    if req.output_url is not None:
        try:
            output = checker.output(req.output_url)
        except Exception as exc:
            errs.append(_code_error(exc, ["output_url"]))
    hook = None
    if req.webhook is not None:
        hook = req.webhook.model_dump()
        try:
            hook["url"] = checker.webhook(hook["url"])
        except Exception as exc:
            errs.append(_code_error(exc, ["webhook", "url"]))
        events = hook["events"] or list(DEFAULT_BATCH_EVENTS)
        hook["events"] = [e for e in dict.fromkeys(events) if e in ALL_EVENTS]
    defaults = dict(req.defaults) if req.defaults is not None else None
    if req.priority is not None:
        defaults = {"priority": req.priority, **(defaults or {})}
    if req.model is not None:
        defaults = {"model": req.model, **(defaults or {})}
    if req.tasks is not None:  # the batch's tasks are a default of every job
        defaults = {**(defaults or {}), "tasks": req.tasks}
    errs += check_defaults(defaults, ["defaults"])
    errs += _check_metadata(req.metadata, ["metadata"])
    bulk = bulk_options(req, checker, errs)
    if errs:
        raise InvalidRequest(f"{len(errs)} invalid field(s)", errors=errs)
    plan = BatchPlan(req.jobs, manifest, defaults, output, hook, req.metadata or {}, req.skip_invalid)
    for key, value in bulk.items():
        setattr(plan, key, value)
    plan.task_names = task_names(defaults)
    return plan


def bulk_options(req: BatchRequest, checker: UrlChecker, errs: list[dict[str, Any]]) -> dict[str, Any]:
    """The bulk fields of a request, judged (problems appended to ``errs``)."""
    out: dict[str, Any] = {}
    if req.source is not None:
        config = getattr(checker, "config", None)
        if config is None:
            errs.append(error(["source"], "batch sources are not available here"))
        else:
            try:
                out["source"] = parse_source(req.source, config)
            except InvalidRequest as exc:
                errs.extend(exc.errors)
    if req.output_formats is not None:
        if req.output_url is None:
            errs.append(error(["output_formats"], "output_formats needs an output_url"))
        out["output_formats"] = list(dict.fromkeys(req.output_formats))
    if req.completion_window is not None:
        try:
            out["completion_window"] = parse_window(req.completion_window)
        except ValueError as exc:
            errs.append(error(["completion_window"], str(exc)))
    if req.resume_from is not None:
        if not req.resume_from.startswith("bat_"):
            errs.append(error(["resume_from"], "expected a batch id (bat_…)"))
        out["resume_from"] = req.resume_from
    return out


_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_SECONDS = 30 * 86400


def parse_window(value: int | str) -> int:
    """A completion window: seconds, or ``"90m"``, ``"24h"``, ``"2d"``; 60 s .. 30 days."""
    if isinstance(value, str):
        v = value.strip().lower()
        if len(v) < 2 or v[-1] not in _WINDOW_UNITS or not v[:-1].isdigit():
            raise ValueError("expected seconds or a duration like '90m', '24h', '2d'")
        value = int(v[:-1]) * _WINDOW_UNITS[v[-1]]
    if not 60 <= value <= MAX_WINDOW_SECONDS:
        raise ValueError(f"the completion window must be between 60 s and {MAX_WINDOW_SECONDS} s")
    return value


def task_names(defaults: dict[str, Any] | None) -> list[str] | None:
    """The names of the batch's default ``tasks`` (one Parquet column each), if it has them."""
    tasks = (defaults or {}).get("tasks")
    if not isinstance(tasks, list):
        return None
    names = [t.get("name") for t in tasks if isinstance(t, dict)]
    return [n for n in names if isinstance(n, str)] or None


def _code_error(exc: Exception, loc: list[Any]) -> dict[str, Any]:
    code = getattr(exc, "code", None)
    if not isinstance(code, str):
        raise exc
    return error(loc, str(getattr(exc, "message", exc)), code)


@dataclass
class Spool:
    """Validated lines, one compact JSON array per line (see :func:`_write`)."""

    file: IO[bytes]
    count: int = 0
    queued: int = 0
    failed: int = 0
    # the models of the queued lines: each gets its own dispatch (jobs.outbox.dispatch_message)
    models: set[str | None] = field(default_factory=set)


def _loads(raw: str | bytes) -> Any:
    return pydantic_core.from_json(raw, allow_inf_nan=False)


def _dumps(value: Any) -> str:
    return pydantic_core.to_json(value).decode()


def validate_lines(
    lines: Iterable[tuple[int, Any]], plan: BatchPlan, checker: UrlChecker, limits: RequestLimits,
    loc_name: str, normalize: Callable[..., dict[str, Any]] = normalize_job_request,
) -> Spool:
    """Phase 1. ``lines`` yields ``(number, raw)`` where raw is a parsed object (inline) or the
    text of a manifest line. Raises :class:`InvalidRequest` with every error's location.
    ``normalize``: a source's items use :class:`jobs.source_requests.SourceNormalizer`."""
    spool = Spool(tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY))  # noqa: SIM115
    errors: list[dict[str, Any]] = []
    seen_custom: set[str] = set()
    batch_hook = plan.webhook
    job_events = [e for e in (batch_hook or {}).get("events", []) if e.startswith("job.")]
    batch_job_hook = {"url": batch_hook["url"], "events": job_events} if batch_hook and job_events else None
    for number, raw in lines:
        loc = [loc_name, number]
        obj = raw
        if isinstance(raw, str | bytes):
            if not raw.strip():
                continue  # blank lines in a manifest are skipped (numbers still count)
            try:
                obj = _loads(raw)
            except ValueError as exc:
                _invalid(spool, errors, plan, [error(loc, f"not valid JSON: {exc}")], None, number)
                if len(errors) >= MAX_ERRORS:
                    break
                continue
        merged = merge_defaults(plan.defaults, obj)
        custom = merged.get("custom_id") if isinstance(merged, dict) else None
        dup = isinstance(custom, str) and custom in seen_custom
        try:
            req = normalize(merged, checker, limits, loc=loc)
            line_errors = []
        except InvalidRequest as exc:
            req, line_errors = None, exc.errors
        if dup:
            errors.append(error([*loc, "custom_id"], f"custom_id {custom!r} appears twice in this batch",
                                "duplicate_custom_id"))
        elif isinstance(custom, str):
            seen_custom.add(custom)
        if line_errors:
            _invalid(spool, errors, plan, line_errors, merged, number, custom if not dup else None)
        elif req is not None and not dup:
            hook = req["webhook"] or batch_job_hook
            _write(spool, [number, req["custom_id"], req["priority"], req["ttl_seconds"],
                           hook["url"] if hook else None, hook["events"] if hook else None,
                           _dumps(req["metadata"]), _dumps(req), req.get("model")])
            spool.queued += 1
            spool.models.add(req.get("model"))
        if len(errors) >= MAX_ERRORS:
            break
    if not errors and spool.count == 0:
        errors.append(error([loc_name], "a batch needs at least one job"))
    if errors:
        spool.file.close()
        if any(e.get("code") == "duplicate_custom_id" for e in errors):
            raise DuplicateCustomId(f"{len(errors)} problem(s) in the batch's jobs", errors=errors)
        raise InvalidRequest(f"{len(errors)} invalid job(s) in the batch", errors=errors)
    spool.file.seek(0)
    return spool


def _write(spool: Spool, item: list[Any]) -> None:
    """Valid: ``[seq, custom_id, priority, ttl_seconds, webhook_url, webhook_events, metadata_json,
    request_json, model]``; invalid (skip_invalid) adds a tenth element, the job error."""
    spool.file.write(pydantic_core.to_json(item) + b"\n")
    spool.count += 1


def _invalid(spool: Spool, errors: list[dict[str, Any]], plan: BatchPlan,
             line_errors: list[dict[str, Any]], obj: Any, number: int, custom: Any = None) -> None:
    if not plan.skip_invalid:
        errors.extend(line_errors)
        return
    message = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][2:]) or 'line'}: {e['msg']}" for e in line_errors
    )[:2000]
    request = obj if isinstance(obj, dict) else {"raw": str(obj)[:1000]}
    request, message, custom = storable.scrub([request, message, custom])  # kept, so made storable
    meta = request.get("metadata") if isinstance(request.get("metadata"), dict) else {}
    invalid = {"code": "invalid_request", "message": message, "retryable": False}
    _write(spool, [number, custom if isinstance(custom, str) else None, 0, None, None, None,
                   _dumps(meta), _dumps(request), None, invalid])
    spool.failed += 1


# Columns written for each job of a batch (the rest keep their defaults: NULL / 0 / false).
COLUMNS = ("id", "tenant_id", "batch_id", "seq", "custom_id", "status", "priority", "request", "error",
           "attempts", "cancel_requested", "metadata", "webhook_url", "webhook_events", "created_at",
           "finished_at", "expires_at", "model", "api_key_id", "trace_context")
_JSON_COLUMNS = frozenset({"request", "error", "metadata", "webhook_events", "trace_context"})


def _job_rows(chunk: list[list[Any]], tenant_id: str, batch_id: str, now: datetime,
              key_id: str | None = None, trace: str | None = None) -> list[tuple[Any, ...]]:
    """Spool lines → row tuples in :data:`COLUMNS` order, JSON columns as JSON text; ``trace``:
    the submitting request's trace context (JSON text), each job's parent in the worker."""
    rows: list[tuple[Any, ...]] = []
    for item in chunk:
        seq, custom, priority, ttl, hook_url, hook_events, meta_json, req_json, model = item[:9]
        if len(item) > 9:  # an invalid line kept as a failed job
            rows.append((ids.job_id(), tenant_id, batch_id, seq, custom, JobStatus.FAILED.value, 0, req_json,
                         _dumps(item[9]), 0, False, meta_json, None, None, now, now, None, None, key_id,
                         None))
        else:
            rows.append((ids.job_id(), tenant_id, batch_id, seq, custom, JobStatus.QUEUED.value, priority,
                         req_json, None, 0, False, meta_json, hook_url,
                         _dumps(hook_events) if hook_events is not None else None, now, None,
                         now + timedelta(seconds=ttl), model, key_id, trace))
    return rows


def _insert_jobs(session: Any, rows: list[tuple[Any, ...]]) -> None:
    """COPY on PostgreSQL (the fastest bulk path, inside the session's transaction); an
    executemany INSERT elsewhere."""
    if session.get_bind().dialect.name == "postgresql":
        raw = session.connection().connection.driver_connection
        with raw.cursor() as cur, cur.copy(f"COPY jobs ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    session.execute(sa.insert(cast(sa.Table, Job.__table__)), [
        {c: (json.loads(v) if c in _JSON_COLUMNS and v is not None else v)
         for c, v in zip(COLUMNS, row, strict=True)}
        for row in rows
    ])


def _read_spool(spool: Spool) -> Iterator[list[list[Any]]]:
    chunk: list[list[Any]] = []
    for line in spool.file:
        chunk.append(_loads(line))
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def insert_batch(service: JobService, tenant_id: str, plan: BatchPlan, spool: Spool,
                 batch_id: str | None = None, admission: Admission | None = None) -> tuple[Batch, list[int]]:
    """Phase 2: one transaction. Returns the batch and the outbox ids to publish: one
    ``dispatch_batch`` row that stands for every queued job's caption message (see
    :func:`jobs.outbox.dispatch_batch`), plus any finalisation message. The queued jobs go on
    the tenant's jobs in flight last (429 past the plan's limit: nothing is inserted)."""
    now = utcnow()
    effects = tx.Effects()
    batch_id = batch_id or ids.batch_id()
    hook = plan.webhook
    carrier = tracing.current_carrier()
    trace = _dumps(carrier) if carrier else None
    with service.db.session() as session:
        session.add(Batch(
            id=batch_id, tenant_id=tenant_id, status=BatchStatus.QUEUED.value, total=0, queued=0,
            running=0, succeeded=0, failed=0, canceled=0, output_url=plan.output_url, meta=plan.metadata,
            webhook_url=hook["url"] if hook else None, webhook_events=hook["events"] if hook else None,
            created_at=now,
            source=plan.source.model_dump(exclude_none=True) if plan.source is not None else None,
            output_formats=plan.output_formats, task_names=plan.task_names,
            part_rows=service.settings.batch_part_rows, parts_done=0, resume_from=plan.resume_from,
            expires_at=(now + timedelta(seconds=plan.completion_window)
                        if plan.completion_window is not None else None),
        ))
        session.flush()
        key_id = admission.key_id if admission else None
        for chunk in _read_spool(spool):
            _insert_jobs(session, _job_rows(chunk, tenant_id, batch_id, now, key_id, trace))
        spool.file.close()
        batch = session.execute(
            sa.update(Batch).where(Batch.id == batch_id)
            .values(total=spool.queued + spool.failed, queued=spool.queued, failed=spool.failed)
            .returning(Batch).execution_options(populate_existing=True, synchronize_session=False)
        ).scalar_one()
        if spool.queued:
            # One dispatch per model, so one model's backlog never holds another's window.
            for model in sorted(spool.models, key=lambda m: m or ""):
                effects.add(outbox.dispatch_message(batch_id, model))
        else:  # every line was invalid (skip_invalid): nothing will run
            tx.on_last_job_ended(session, batch, now, effects)
            session.flush()
            batch = session.execute(
                sa.select(Batch).where(Batch.id == batch_id).execution_options(populate_existing=True)
            ).scalar_one()
        outbox_ids = outbox.add(session, effects.messages, now)
        admit(session, tenant_id, spool.queued, admission.limits if admission else None, now)
    if spool.queued >= ANALYZE_AFTER and service.db.dialect == "postgresql":
        _analyze_jobs(service)
    return batch, outbox_ids


def precheck(service: JobService, tenant_id: str, admit: Admission, jobs: int) -> None:
    """Quota and room for ``jobs`` more in flight, before a batch is validated (a refusal then
    costs no validation); :func:`insert_batch` decides, exactly, in its transaction."""
    with service.db.session() as session:
        admission_precheck(session, tenant_id, admit, jobs, utcnow())


def _analyze_jobs(service: JobService) -> None:
    """Fresh planner statistics after a large batch. Until autovacuum gets to it, PostgreSQL
    believes almost no job is queued, and counting the queued jobs whose message was sent (the
    fair dispatcher, after every claim) goes through every queued job instead of the small
    partial index meant for it: measured 20-100 ms a dispatch with 30,000 jobs waiting, against
    well under 1 ms."""
    try:
        with service.db.session() as session:
            session.execute(sa.text("ANALYZE jobs"))
    except Exception as exc:  # statistics only: autovacuum catches up later
        log.warning("ANALYZE jobs after a large batch failed: %s", exc)


# --- reads, cancel ----------------------------------------------------------------------------
def get_batch(service: JobService, tenant_id: str, batch_id: str) -> Batch:
    with service.db.session() as session:
        batch = session.scalar(sa.select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id))
    if batch is None:
        raise NotFound(f"no batch {batch_id!r}")
    return batch


def cancel_batch(service: JobService, tenant_id: str, batch_id: str) -> Batch:
    """Cancel every job of the batch that has not finished: queued ones at once (in chunks, each
    its own transaction so no lock is held long), running ones at their next generation step.

    The batch keeps its status (``running`` while jobs still run) with ``cancel_requested_at``
    set, and becomes ``canceled`` when its last job has ended (:func:`jobs.transitions.finalize`):
    a ``canceled`` batch never shows running jobs in its counts."""
    now = utcnow()
    with service.db.session() as session:
        batch = session.scalar(sa.select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id))
        if batch is None:
            raise NotFound(f"no batch {batch_id!r}")
        if batch.finalized_at is not None or tx.all_ended(batch):
            raise BatchFinished(f"batch {batch_id} has already finished")
        session.execute(
            sa.update(Batch).where(Batch.id == batch_id, Batch.finalized_at.is_(None))
            .values(cancel_requested_at=sa.func.coalesce(
                Batch.cancel_requested_at, sa.literal(now, Batch.cancel_requested_at.type)))
        )
        session.execute(
            sa.update(Job).where(Job.batch_id == batch_id, Job.status == JobStatus.RUNNING.value)
            .values(cancel_requested=True)
        )
    last_seq = -1
    while True:
        effects = tx.Effects()
        with service.db.session() as session:
            chunk = session.execute(
                sa.select(Job.id, Job.seq).where(Job.batch_id == batch_id, Job.seq > last_seq,
                                                 Job.status == JobStatus.QUEUED.value)
                .order_by(Job.seq).limit(CHUNK)
            ).all()
            if not chunk:
                break
            last_seq = chunk[-1].seq
            done = tx.apply_bulk(session, [r.id for r in chunk], CANCEL, JobStatus.QUEUED,
                                 {"finished_at": now, "partial_text": None})
            tx.after_bulk(session, done, JobStatus.QUEUED, now, effects)
            ids_ = outbox.add(session, effects.messages, now)
        service.publish(ids_)
    # Again after the queued ones: a job claimed while they were being canceled was still queued
    # at the first flag and is running now; without this it would run to its end.
    with service.db.session() as session:
        session.execute(
            sa.update(Job).where(Job.batch_id == batch_id, Job.status == JobStatus.RUNNING.value)
            .values(cancel_requested=True)
        )
    return get_batch(service, tenant_id, batch_id)


def running_job_ids(service: JobService, batch_id: str) -> list[str]:
    """The batch's jobs a worker is running now: after a cancel, the ones to announce to the
    workers (jobs.live.CANCEL_CHANNEL) so they stop at their next step, not at their next poll."""
    with service.db.session() as session:
        return list(session.scalars(sa.select(Job.id).where(
            Job.batch_id == batch_id, Job.status == JobStatus.RUNNING.value)))


def iter_results(service: JobService, tenant_id: str, batch_id: str) -> Iterator[bytes]:
    """NDJSON lines of a batch's results in submission order (after an ownership check)."""
    get_batch(service, tenant_id, batch_id)
    for line in service.iter_batch_results(batch_id):
        yield json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
