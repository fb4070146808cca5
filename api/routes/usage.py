"""``GET /v1/usage``: what the tenant's jobs used, by day, key or model (``read`` scope).

Figures come from ``usage_daily`` (jobs/usage.py): a job counts on the UTC day it ended, once.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request

from api.context import get_ctx, tenant
from core.errors import InvalidRequest
from jobs import usage

router = APIRouter(prefix="/v1", tags=["usage"])
MAX_DAYS = 366


def _day(value: str | None, name: str, default: date) -> date:
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        msg = "a date, YYYY-MM-DD (UTC)"
        raise InvalidRequest(f"{name}: {msg}", errors=[{"loc": ["query", name], "msg": msg}]) from None


@router.get("/usage", summary="Usage of the tenant's jobs: images, frames, tiles, tokens, GPU seconds")
async def get_usage(
    request: Request, tenant_id: Annotated[str, Depends(tenant)],
    from_: Annotated[str | None, Query(alias="from", description="First UTC day, YYYY-MM-DD (default: the "
                                       "first of this month)", json_schema_extra={"format": "date"})] = None,
    to: Annotated[str | None, Query(description="Last UTC day, included (default: today)",
                                    json_schema_extra={"format": "date"})] = None,
    group_by: Annotated[Literal["day", "key", "model"] | None, Query(
        description="One row per day, per API key or per model; none: the total only")] = None,
) -> dict[str, Any]:
    """Jobs count on the UTC day they ended (succeeded, failed or canceled), with the figures of
    their own ``metrics``; ``gpu_seconds`` is the time a job held an engine slot."""
    ctx = get_ctx(request)
    today = datetime.now(UTC).date()
    start = _day(from_, "from", today.replace(day=1))
    end = _day(to, "to", today)
    if end < start or (end - start).days >= MAX_DAYS:
        msg = f"'to' must be on or after 'from', at most {MAX_DAYS} days later"
        raise InvalidRequest(msg, errors=[{"loc": ["query", "to"], "msg": msg}])

    def run() -> dict[str, Any]:
        with ctx.db.session() as session:
            total = usage.totals(session, tenant_id, start, end + timedelta(days=1))[0]
            rows = (usage.totals(session, tenant_id, start, end + timedelta(days=1), group_by)
                    if group_by else [])
        return {"object": "usage", "from": start.isoformat(), "to": end.isoformat(), "group_by": group_by,
                "data": rows, "total": total}

    return await to_thread.run_sync(run)  # type: ignore[no-any-return]
