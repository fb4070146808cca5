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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.errors import QuotaExceeded, TooManyJobsInFlight
from jobs.plans import Limits
from jobs.tables import Tenant
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
    tokens = used["input_tokens"] + used["output_tokens"]
    for what, have, quota in (("images", used["images"], limits.monthly_images),
                              ("tokens", tokens, limits.monthly_tokens),
                              ("GPU seconds", used["gpu_seconds"], limits.monthly_gpu_seconds)):
        if quota is not None and have >= quota:
            raise QuotaExceeded(
                f"the monthly quota of {quota:g} {what} is used ({have:g} since {start.isoformat()}); "
                "new work is accepted again next month or on a larger plan",
                extra={"quota": what, "limit": quota, "used": have})


def precheck(session: Session, tenant_id: str, admission: Admission, jobs: int, now: datetime) -> None:
    """Before the work of validating a batch: its quota, and whether ``jobs`` more could fit
    (without locking; :func:`reserve` decides)."""
    check_quota(session, tenant_id, admission.limits, now)
    limit = admission.limits.max_jobs_in_flight
    if limit is not None:
        current = int(session.scalar(sa.select(Tenant.jobs_in_flight).where(Tenant.id == tenant_id)) or 0)
        if current + jobs > limit:
            raise _too_many(current, jobs, limit)


def reserve(session: Session, tenant_id: str, jobs: int, limit: int | None) -> None:
    """Put ``jobs`` new queued jobs on the tenant's count; the last statement of the submission's
    transaction. 429 ``too_many_jobs_in_flight`` (the transaction then rolls back) past ``limit``."""
    if jobs <= 0:
        return
    count = Tenant.jobs_in_flight
    stmt = sa.update(Tenant).where(Tenant.id == tenant_id)
    if limit is not None:
        stmt = stmt.where(count + jobs <= limit)
    res: Any = session.execute(stmt.values(jobs_in_flight=count + jobs))
    if res.rowcount == 0 and limit is not None:
        current = int(session.scalar(sa.select(Tenant.jobs_in_flight).where(Tenant.id == tenant_id)) or 0)
        raise _too_many(current, jobs, limit)


def _too_many(current: int, jobs: int, limit: int) -> TooManyJobsInFlight:
    return TooManyJobsInFlight(
        f"{current} jobs are queued or running and the plan allows {limit} at once; "
        f"{jobs} more do not fit", headers={"Retry-After": str(IN_FLIGHT_RETRY_SECONDS)},
        extra={"limit": limit, "in_flight": current})
