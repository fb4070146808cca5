"""Plans: the rate limits, jobs in flight and monthly quotas a tenant gets.

A tenant on no plan (``tenants.plan`` NULL) gets the defaults in settings
(``CAPTIONQ_DEFAULT_*``). A NULL limit on a plan means "no limit", except the per-key rate,
which then equals the tenant's. The API reads a tenant's limits with its key
(:func:`jobs.api_keys.verify_key`) and keeps them for the auth cache's lifetime, so a changed
plan takes effect within ``auth_cache_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.db import utcnow
from core.errors import InvalidRequest, NotFound
from core.settings import Settings
from jobs.tables import Plan, Tenant

PLAN_FIELDS = ("requests_per_second", "burst", "key_requests_per_second", "key_burst", "max_jobs_in_flight",
               "monthly_images", "monthly_tokens", "monthly_gpu_seconds")


@dataclass(frozen=True)
class Limits:
    plan: str | None  # None: the defaults in settings
    requests_per_second: float
    burst: int
    key_requests_per_second: float
    key_burst: int
    max_jobs_in_flight: int | None
    monthly_images: int | None
    monthly_tokens: int | None
    monthly_gpu_seconds: float | None

    @property
    def has_quota(self) -> bool:
        quotas = (self.monthly_images, self.monthly_tokens, self.monthly_gpu_seconds)
        return any(q is not None for q in quotas)


def default_limits(settings: Settings) -> Limits:
    rps, burst = settings.default_requests_per_second, settings.default_burst
    return Limits(
        plan=None, requests_per_second=rps, burst=burst,
        key_requests_per_second=settings.default_key_requests_per_second or rps,
        key_burst=settings.default_key_burst or burst,
        max_jobs_in_flight=settings.default_max_jobs_in_flight,
        monthly_images=settings.default_monthly_images, monthly_tokens=settings.default_monthly_tokens,
        monthly_gpu_seconds=settings.default_monthly_gpu_seconds,
    )


def limits_of(plan: Plan | None, settings: Settings) -> Limits:
    if plan is None:
        return default_limits(settings)
    return Limits(
        plan=plan.name, requests_per_second=plan.requests_per_second, burst=plan.burst,
        key_requests_per_second=plan.key_requests_per_second or plan.requests_per_second,
        key_burst=plan.key_burst or plan.burst, max_jobs_in_flight=plan.max_jobs_in_flight,
        monthly_images=plan.monthly_images, monthly_tokens=plan.monthly_tokens,
        monthly_gpu_seconds=plan.monthly_gpu_seconds,
    )


def tenant_limits(session: Session, tenant_id: str, settings: Settings) -> Limits:
    plan = session.scalar(
        sa.select(Plan).join(Tenant, Tenant.plan == Plan.name).where(Tenant.id == tenant_id))
    return limits_of(plan, settings)


def save_plan(session: Session, name: str, values: dict[str, Any]) -> Plan:
    """Create plan ``name`` or change the fields given in ``values`` (None clears a limit)."""
    unknown = set(values) - set(PLAN_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown plan fields: {', '.join(sorted(unknown))}")
    for k in ("requests_per_second", "burst"):
        if k in values and (values[k] is None or values[k] <= 0):
            raise InvalidRequest(f"{k} must be above 0")
    plan = session.get(Plan, name)
    if plan is None:
        if "requests_per_second" not in values or "burst" not in values:
            raise InvalidRequest("a new plan needs requests_per_second and burst")
        plan = Plan(name=name, created_at=utcnow())
        session.add(plan)
    for k, v in values.items():
        setattr(plan, k, v)
    session.flush()
    return plan


def list_plans(session: Session) -> list[Plan]:
    return list(session.scalars(sa.select(Plan).order_by(Plan.name)))


def assign_plan(session: Session, tenant_id_or_name: str, plan: str | None) -> str:
    """Put a tenant on ``plan`` (None: the defaults); returns the tenant id."""
    if plan is not None and session.get(Plan, plan) is None:
        raise NotFound(f"no plan {plan!r}")
    tenant = session.scalar(sa.select(Tenant).where(
        sa.or_(Tenant.id == tenant_id_or_name, Tenant.name == tenant_id_or_name)))
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id_or_name!r}")
    tenant.plan = plan
    session.flush()
    return tenant.id


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {"name": plan.name, **{f: getattr(plan, f) for f in PLAN_FIELDS}}
