"""Admission of new work: monthly quotas and jobs in flight, checked at submission.

- **Quotas** (``plans.monthly_images`` / ``monthly_tokens`` / ``monthly_gpu_seconds``): a
  submission once the tenant's usage this UTC month (:mod:`jobs.usage`, counted as jobs end)
  has reached a quota is 403 ``quota_exceeded``. Work already accepted always runs to its end,
  so a month can end a little over its quota, by the jobs in flight at the moment it was reached.
- **Jobs in flight** (``plans.max_jobs_in_flight``): ``tenants.jobs_in_flight`` counts the
  tenant's queued and running jobs. A submission adds its jobs with one conditional
  ``UPDATE … WHERE jobs_in_flight + n <= limit`` as the last statement of its transaction (the
  row stays locked only until the commit), so concurrent submissions can never take the count
  past the limit; one that would is 429 ``too_many_jobs_in_flight`` and inserts nothing. A batch
  counts all of its jobs. The count is kept even without a limit, so that a limit set later is
  right at once.

Both are one statement, one round trip (:func:`admit`): the UPDATE returns the month's usage
from scalar subqueries, and a refusal rolls the whole submission back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.errors import QuotaExceeded, TooManyJobsInFlight
from jobs.plans import Limits
from jobs.tables import Tenant, UsageDaily
from jobs.usage import month_start, totals

# Jobs in flight leave as they end, at no predictable moment: a client is told to look again
# after this long (a polling interval, not a promise).
IN_FLIGHT_RETRY_SECONDS = 5


@dataclass(frozen=True)
class Admission:
    """Who submits and under which limits (from the authenticated key)."""

    key_id: str | None
    limits: Limits


def check_quota(session: Session, tenant_id: str, limits: Limits, now: datetime) -> None:
    """403 ``quota_exceeded`` when this month's usage reached one of the plan's quotas."""
    if not limits.has_quota:
        return
    start = month_start(now)
    used = totals(session, tenant_id, start, date(9999, 12, 31))[0]
    _check(limits, start, used["images"], used["input_tokens"] + used["output_tokens"], used["gpu_seconds"])


def _check(limits: Limits, start: date, images: int, tokens: int, gpu_seconds: float) -> None:
    for what, have, quota in (("images", images, limits.monthly_images),
                              ("tokens", tokens, limits.monthly_tokens),
                              ("GPU seconds", gpu_seconds, limits.monthly_gpu_seconds)):
        if quota is not None and have >= quota:
            raise QuotaExceeded(
                f"the monthly quota of {quota:g} {what} is used ({have:g} since {start.isoformat()}); "
                "new work is accepted again next month or on a larger plan",
                extra={"quota": what, "limit": quota, "used": have})


def precheck(session: Session, tenant_id: str, admission: Admission, jobs: int, now: datetime) -> None:
    """Before the work of validating a batch: its quota, and whether ``jobs`` more could fit
    (without locking; :func:`admit` decides)."""
    check_quota(session, tenant_id, admission.limits, now)
    limit = admission.limits.max_jobs_in_flight
    if limit is not None:
        current = int(session.scalar(sa.select(Tenant.jobs_in_flight).where(Tenant.id == tenant_id)) or 0)
        if current + jobs > limit:
            raise _too_many(current, jobs, limit)


def admit(session: Session, tenant_id: str, jobs: int, limits: Limits | None, now: datetime) -> None:
    """Put ``jobs`` new queued jobs on the tenant's count and check the month's quotas, in one
    statement: the last of the submission's transaction. 429 ``too_many_jobs_in_flight`` past
    the plan's limit, 403 ``quota_exceeded`` past a quota; either way the caller's transaction
    rolls back (nothing was submitted). ``limits`` None: count only (internal callers)."""
    if jobs <= 0:
        return
    limit = limits.max_jobs_in_flight if limits is not None else None
    quotas = limits is not None and limits.has_quota
    start = month_start(now)
    params: dict[str, Any] = {"tenant_id": tenant_id, "jobs": jobs}
    if limit is not None:
        params["limit"] = limit
    if quotas:
        params["start"] = start
    result: Any = session.execute(_admit_statement(limit is not None, quotas), params)
    row = result.first() if quotas else None
    if (row is None if quotas else result.rowcount == 0) and limit is not None:
        current = int(session.scalar(sa.select(Tenant.jobs_in_flight).where(Tenant.id == tenant_id)) or 0)
        raise _too_many(current, jobs, limit)
    if row is not None:
        assert limits is not None
        _check(limits, start, int(row.images), int(row.tokens), float(row.gpu_seconds))


@functools.cache
def _admit_statement(limited: bool, quotas: bool) -> sa.Update:
    """The admission UPDATE, built once per shape and run as a Core statement with parameters
    (building and compiling it per submission cost more than its round trip). With quotas it
    returns the month's usage from scalar subqueries on ``usage_daily`` (each a range of its
    primary key: tenant, day)."""
    t: sa.Table = Tenant.__table__  # type: ignore[assignment]
    count, jobs = t.c.jobs_in_flight, sa.bindparam("jobs", type_=sa.Integer)
    stmt = sa.update(t).where(t.c.id == sa.bindparam("tenant_id")).values(jobs_in_flight=count + jobs)
    if limited:
        stmt = stmt.where(count + jobs <= sa.bindparam("limit", type_=sa.Integer))
    if quotas:
        u: sa.Table = UsageDaily.__table__  # type: ignore[assignment]
        month = (u.c.tenant_id == sa.bindparam("tenant_id"), u.c.day >= sa.bindparam("start", type_=sa.Date))

        def used(expr: Any, name: str) -> Any:
            total = sa.select(sa.func.coalesce(sa.func.sum(expr), 0)).where(*month)
            return total.scalar_subquery().label(name)

        stmt = stmt.returning(used(u.c.images, "images"),
                              used(u.c.input_tokens + u.c.output_tokens, "tokens"),
                              used(u.c.gpu_seconds, "gpu_seconds"))
    return stmt


def _too_many(current: int, jobs: int, limit: int) -> TooManyJobsInFlight:
    return TooManyJobsInFlight(
        f"{current} jobs are queued or running and the plan allows {limit} at once; "
        f"{jobs} more do not fit", headers={"Retry-After": str(IN_FLIGHT_RETRY_SECONDS)},
        extra={"limit": limit, "in_flight": current})
