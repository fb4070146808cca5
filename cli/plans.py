"""``captionq plans``: rate limits, jobs in flight and monthly quotas, and which tenant has which."""

from __future__ import annotations

import json
from typing import Any

import typer

from cli.common import console, database_reachable, fail, settings_or_exit

app = typer.Typer(help="Plans: rate limits, jobs in flight and monthly quotas per tenant.", no_args_is_help=True)


def _run(fn: Any) -> Any:
    from core.db import Database
    from core.errors import CaptionqError

    settings = settings_or_exit()
    db = Database(settings)
    try:
        with database_reachable(settings), db.session() as session:
            out = fn(session)
            session.commit()
            return out
    except CaptionqError as exc:
        raise fail(f"{exc.code}: {exc.message}", 2) from None
    finally:
        db.dispose()


@app.command("set")
def set_plan(
    name: str = typer.Argument(..., help="Plan name (created if new)."),
    rps: float | None = typer.Option(None, "--rps", help="Requests per second per tenant (POST routes)."),
    burst: int | None = typer.Option(None, "--burst", help="Burst per tenant (the bucket's size)."),
    key_rps: float | None = typer.Option(None, "--key-rps", help="Requests per second per key (default: --rps)."),
    key_burst: int | None = typer.Option(None, "--key-burst", help="Burst per key (default: --burst)."),
    max_in_flight: int | None = typer.Option(None, "--max-in-flight", help="Queued + running jobs per tenant."),
    monthly_images: int | None = typer.Option(None, "--monthly-images", help="Images per UTC month."),
    monthly_tokens: int | None = typer.Option(None, "--monthly-tokens", help="Input + output tokens per month."),
    monthly_gpu_seconds: float | None = typer.Option(None, "--monthly-gpu-seconds", help="GPU seconds per month."),
    clear: list[str] = typer.Option([], "--clear", help="Remove a limit (a field name, e.g. monthly_images)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a plan or change the limits given. Tenants on it get the change within
    CAPTIONQ_AUTH_CACHE_SECONDS (30 s)."""
    from jobs.plans import plan_to_dict, save_plan

    given = {"requests_per_second": rps, "burst": burst, "key_requests_per_second": key_rps,
             "key_burst": key_burst, "max_jobs_in_flight": max_in_flight, "monthly_images": monthly_images,
             "monthly_tokens": monthly_tokens, "monthly_gpu_seconds": monthly_gpu_seconds}
    values: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    values.update(dict.fromkeys(clear))
    plan = _run(lambda s: plan_to_dict(save_plan(s, name, values)))
    if as_json:
        typer.echo(json.dumps(plan))
    else:
        console.print(" ".join(f"{k}={v}" for k, v in plan.items()), highlight=False)


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every plan and its limits (empty: no limit)."""
    from jobs.plans import list_plans, plan_to_dict

    plans = _run(lambda s: [plan_to_dict(p) for p in list_plans(s)])
    if as_json:
        typer.echo(json.dumps(plans))
        return
    for p in plans:
        console.print(" ".join(f"{k}={'' if v is None else v}" for k, v in p.items()), highlight=False)
    if not plans:
        console.print("no plans: every tenant has the defaults in settings (CAPTIONQ_DEFAULT_*)")


@app.command("assign")
def assign(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id or name."),
    plan: str | None = typer.Option(None, "--plan", help="Plan name; omit to go back to the defaults."),
) -> None:
    """Put a tenant on a plan (or, without --plan, on the defaults in settings)."""
    from jobs.plans import assign_plan

    tenant_id = _run(lambda s: assign_plan(s, tenant, plan))
    console.print(f"{tenant_id} is on {plan or 'the default limits'} (in effect within the auth cache TTL)")
