"""Usage: what each tenant's (and key's) jobs used, by UTC day and model, and jobs in flight.

Counted when a job ends, in the same transaction as its terminal transition (the conditional
UPDATE in :mod:`jobs.transitions` that only one caller can win), so a job is counted exactly
once however often its outcome is recorded, and never while it runs. The figures are the job's
own ``metrics`` (``images``, ``frames``, ``tiles``, ``input_tokens``, ``output_tokens``, and
``engine_seconds`` as GPU seconds: the time the job held an engine slot); a job that ended
without running counts as one job and nothing else.

The same transaction takes the job off ``tenants.jobs_in_flight`` (the submission put it on,
:mod:`jobs.admission`). Lock order: job rows, the batch row, then the tenant row and the usage
rows, as every terminal path takes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobs.tables import Job, Tenant, UsageDaily

COUNTS = ("images", "frames", "tiles", "input_tokens", "output_tokens")
FIELDS = ("jobs", *COUNTS, "gpu_seconds")


def usage_of(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """One ended job's contribution (its ``metrics``, or nothing when it never ran)."""
    m = metrics or {}
    out: dict[str, Any] = {"jobs": 1}
    for name in COUNTS:
        v = m.get(name)
        out[name] = int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0
    gpu = m.get("engine_seconds")
    out["gpu_seconds"] = float(gpu) if isinstance(gpu, int | float) and not isinstance(gpu, bool) else 0.0
    return out


def record_ended(session: Session, jobs: Iterable[Job], now: datetime) -> None:
    """``jobs`` just moved from queued/running to a terminal status in this transaction."""
    day = now.date()
    per_row: dict[tuple[str, str, str], dict[str, Any]] = {}
    per_tenant: dict[str, int] = {}
    for job in jobs:
        metrics = job.metrics if isinstance(job.metrics, dict) else None
        model = str((metrics or {}).get("model") or "")[:200]
        key = (job.tenant_id, job.api_key_id or "", model)
        add = usage_of(metrics)
        row = per_row.setdefault(key, dict.fromkeys(FIELDS, 0))
        for f in FIELDS:
            row[f] += add[f]
        per_tenant[job.tenant_id] = per_tenant.get(job.tenant_id, 0) + 1
    for tenant_id, n in sorted(per_tenant.items()):
        session.execute(sa.update(Tenant).where(Tenant.id == tenant_id)
                        .values(jobs_in_flight=Tenant.jobs_in_flight - n))
    for (tenant_id, key_id, model), sums in sorted(per_row.items()):
        _add_usage(session, {"tenant_id": tenant_id, "day": day, "api_key_id": key_id, "model": model,
                             **sums})


def record_reopened(session: Session, jobs: Iterable[Job]) -> None:
    """``jobs`` ended before and are queued again (a batch retry): back on ``jobs_in_flight``;
    their new attempt is counted again when it ends."""
    per_tenant: dict[str, int] = {}
    for job in jobs:
        per_tenant[job.tenant_id] = per_tenant.get(job.tenant_id, 0) + 1
    for tenant_id, n in sorted(per_tenant.items()):
        session.execute(sa.update(Tenant).where(Tenant.id == tenant_id)
                        .values(jobs_in_flight=Tenant.jobs_in_flight + n))


def _add_usage(session: Session, values: dict[str, Any]) -> None:
    """``INSERT … ON CONFLICT DO UPDATE SET x = x + excluded.x`` (PostgreSQL and SQLite)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt: Any = dialect.insert(UsageDaily).values(**values)
    table = UsageDaily.__table__.c
    session.execute(stmt.on_conflict_do_update(
        index_elements=["tenant_id", "day", "api_key_id", "model"],
        set_={f: table[f] + stmt.excluded[f] for f in FIELDS},
    ))


# --- reading it back ----------------------------------------------------------------------------
GROUPS = {"day": UsageDaily.day, "key": UsageDaily.api_key_id, "model": UsageDaily.model}


def totals(session: Session, tenant_id: str, start: date, end: date, group_by: str | None = None,
           ) -> list[dict[str, Any]]:
    """Sums over ``start`` ≤ day < ``end``; one row per group (``day``, ``key``, ``model``) or
    one row in all."""
    cols = [sa.func.coalesce(sa.func.sum(getattr(UsageDaily, f)), 0).label(f) for f in FIELDS]
    where = (UsageDaily.tenant_id == tenant_id, UsageDaily.day >= start, UsageDaily.day < end)
    if group_by is None:
        q = sa.select(*cols).where(*where)
    else:
        g = GROUPS[group_by]
        q = sa.select(g.label("group"), *cols).where(*where).group_by(g).order_by(g)
    out = []
    for row in session.execute(q):
        m = row._mapping
        item: dict[str, Any] = {}
        if group_by is not None:
            v = m["group"]
            item[group_by] = v.isoformat() if isinstance(v, date) else (v or None)
        item.update({f: (round(float(m[f]), 3) if f == "gpu_seconds" else int(m[f])) for f in FIELDS})
        out.append(item)
    return out


def month_start(now: datetime) -> date:
    return date(now.year, now.month, 1)
