"""``captionq tenants``: a tenant's share of the GPU slots (weighted fair scheduling)."""

from __future__ import annotations

import json

import typer

from cli.common import console, database_reachable, fail, settings_or_exit

app = typer.Typer(help="Set tenants' shares of the GPU slots (weighted fair scheduling).", no_args_is_help=True)


@app.command("set-weight")
def set_weight(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id or name."),
    weight: float | None = typer.Option(
        None, "--weight", help="Share of the GPU slots among tenants with waiting work (a positive number)."),
    default: bool = typer.Option(False, "--default", help="Use CAPTIONQ_FAIR_DEFAULT_WEIGHT again."),
    as_json: bool = typer.Option(False, "--json", help='Print {"tenant", "weight"}.'),
) -> None:
    """Give a tenant a weight: while several tenants have batch jobs waiting, each gets GPU slots
    in proportion to its weight (weight 3 gets three times the jobs of weight 1). Takes effect at
    the next dispatch."""
    from core.db import Database
    from core.errors import CaptionqError
    from jobs.tenants import set_weight as store

    if (weight is None) == (not default):
        raise fail("give either --weight N or --default (see captionq tenants set-weight --help)", 2)
    settings = settings_or_exit()
    db = Database(settings)
    try:
        with database_reachable(settings), db.session() as session:
            tenant_id = store(session, tenant, weight)
            session.commit()
    except CaptionqError as exc:
        raise fail(f"{exc.code}: {exc.message}", 2) from None
    except ValueError as exc:
        raise fail(f"--weight: {exc}", 2) from None
    finally:
        db.dispose()
    effective = weight if weight is not None else settings.fair_default_weight
    if as_json:
        typer.echo(json.dumps({"tenant": tenant_id, "weight": effective}))
    else:
        console.print(f"tenant {tenant_id} weight {effective:g}{' (default)' if weight is None else ''}")
