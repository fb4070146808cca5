"""The figures the dashboard shows: a tenant's recent jobs summed up, a batch's progress, and the
queues an operator watches.

Overview figures come from the tenant's jobs *created* in the window (newest first, at most
``SAMPLE`` rows, read through the ``(tenant_id, created_at, id)`` index), so one page view costs
one bounded index range scan whatever the table's size; totals say when the sample was cut.
Percentiles are computed here rather than in SQL so that SQLite (local mode) and PostgreSQL
give the same numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobs.states import JobStatus
from jobs.tables import Job, WebhookMessage
from jobs.webhooks import PENDING

SAMPLE = 20_000
STATUSES = tuple(s.value for s in JobStatus)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Overview:
    since: datetime
    bucket_seconds: float
    buckets: list[dict[str, int]]  # per time bucket (oldest first): status -> jobs created then
    totals: dict[str, int]
    throughput_per_min: float  # jobs that ended in the window, per minute
    queue_wait_p50: float | None
    queue_wait_p95: float | None
    run_time_p50: float | None
    run_time_p95: float | None
    failures: list[tuple[str, int]]  # error code -> count, most frequent first
    sampled: bool  # the window held more than SAMPLE jobs; figures cover the newest SAMPLE
    active_now: dict[str, int] = field(default_factory=dict)  # queued/running now, any age


def summarize(rows: list[Any], now: datetime, window: timedelta, n_buckets: int) -> Overview:
    """Figures from rows with ``status, created_at, started_at, finished_at, error`` (pure)."""
    since = now - window
    step = window.total_seconds() / n_buckets
    buckets: list[dict[str, int]] = [dict.fromkeys(STATUSES, 0) for _ in range(n_buckets)]
    totals: Counter[str] = Counter()
    waits: list[float] = []
    runs: list[float] = []
    failures: Counter[str] = Counter()
    ended = 0
    for r in rows:
        index = min(n_buckets - 1, max(0, int((r.created_at - since).total_seconds() // step)))
        buckets[index][r.status] = buckets[index].get(r.status, 0) + 1
        totals[r.status] += 1
        if r.started_at is not None:
            waits.append(max(0.0, (r.started_at - r.created_at).total_seconds()))
        if r.finished_at is not None:
            ended += 1
            if r.started_at is not None and r.status == JobStatus.SUCCEEDED:
                runs.append(max(0.0, (r.finished_at - r.started_at).total_seconds()))
        if r.status == JobStatus.FAILED:
            code = (r.error or {}).get("code") if isinstance(r.error, dict) else None
            failures[str(code or "unknown")] += 1
    return Overview(
        since=since, bucket_seconds=step, buckets=buckets,
        totals={s: totals.get(s, 0) for s in STATUSES},
        throughput_per_min=ended / (window.total_seconds() / 60.0),
        queue_wait_p50=percentile(waits, 0.5), queue_wait_p95=percentile(waits, 0.95),
        run_time_p50=percentile(runs, 0.5), run_time_p95=percentile(runs, 0.95),
        failures=failures.most_common(), sampled=len(rows) >= SAMPLE,
    )


def tenant_overview(session: Session, tenant_id: str, now: datetime, window: timedelta,
                    n_buckets: int = 12) -> Overview:
    cols = (Job.status, Job.created_at, Job.started_at, Job.finished_at, Job.error)
    rows = session.execute(
        sa.select(*cols).where(Job.tenant_id == tenant_id, Job.created_at >= now - window)
        .order_by(Job.created_at.desc(), Job.id.desc()).limit(SAMPLE)
    ).all()
    out = summarize(list(rows), now, window, n_buckets)
    active = session.execute(
        sa.select(Job.status, sa.func.count()).where(
            Job.tenant_id == tenant_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .group_by(Job.status)).all()
    out.active_now = {JobStatus.QUEUED.value: 0, JobStatus.RUNNING.value: 0,
                      **{str(s): int(n) for s, n in active}}
    return out


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    percent: float
    rate_per_min: float | None  # ended jobs per minute since the batch was created
    eta_seconds: float | None  # at that rate; None when nothing ended yet or all did


def batch_progress(counts: dict[str, int], created_at: datetime, finished_at: datetime | None,
                   now: datetime) -> Progress:
    total = int(counts.get("total", 0))
    done = sum(int(counts.get(k, 0)) for k in ("succeeded", "failed", "canceled"))
    percent = 100.0 if total == 0 else round(100.0 * done / total, 1)
    elapsed = ((finished_at or now) - created_at).total_seconds()
    rate = done / elapsed * 60.0 if done and elapsed > 0 else None
    remaining = total - done
    eta = remaining / rate * 60.0 if rate and remaining > 0 and finished_at is None else None
    return Progress(done, total, percent, None if rate is None else round(rate, 2), eta)


def pending_webhooks(session: Session, now: datetime) -> dict[str, Any]:
    """What waits on the ``io`` queue, read from the database (every tenant): webhook messages
    due or retrying, and the age of the oldest. (Caption jobs wait per model:
    :func:`jobs.model_fleet.list_models`.)"""
    count, oldest = session.execute(
        sa.select(sa.func.count(), sa.func.min(WebhookMessage.created_at))
        .where(WebhookMessage.status == PENDING)).one()
    return {"queue": "io", "depth": int(count),
            "oldest_age_s": None if oldest is None else max(0.0, (now - oldest).total_seconds())}
