"""``captionq keys``: tenant API keys and webhook signing secrets."""

from __future__ import annotations

import json

import typer

from cli.common import console, database_reachable, fail, settings_or_exit

app = typer.Typer(help="Create tenant API keys and rotate webhook signing secrets.", no_args_is_help=True)


@app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="Tenant name (unique); a new tenant is created."),
    as_json: bool = typer.Option(False, "--json", help='Print {"tenant", "api_key", "webhook_secret"}.'),
) -> None:
    """Create a tenant and its API key. The key and the webhook secret are printed ONCE: only a
    hash of the key is stored."""
    from core.db import Database
    from core.errors import CaptionqError
    from jobs.tenants import create_api_key

    settings = settings_or_exit()
    db = Database(settings)
    try:
        with database_reachable(settings), db.session() as session:
            created = create_api_key(session, name)
            session.commit()
    except CaptionqError as exc:
        raise fail(f"{exc.code}: {exc.message}", 2) from None
    if as_json:
        typer.echo(json.dumps({"tenant": created.tenant_id, "api_key": created.api_key,
                               "webhook_secret": created.webhook_secret}))
        return
    console.print(f"tenant         {created.tenant_id}")
    console.print(f"api key        {created.api_key}")
    console.print(f"webhook secret {created.webhook_secret}")
    console.print("[dim]Store both now: they are not shown again.[/dim]")


@app.command("rotate-webhook-secret")
def rotate_webhook_secret(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id or name."),
    grace_seconds: int | None = typer.Option(
        None, help="How long the old secret keeps signing too (default: CAPTIONQ_WEBHOOK_SECRET_GRACE_SECONDS)."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Issue a new webhook signing secret. During the grace period every webhook carries both
    signatures (space-separated), so receivers can switch without dropping messages."""
    from core.db import Database
    from core.errors import CaptionqError
    from jobs.tenants import rotate_webhook_secret as rotate

    settings = settings_or_exit()
    grace = settings.webhook_secret_grace_seconds if grace_seconds is None else grace_seconds
    db = Database(settings)
    try:
        with database_reachable(settings), db.session() as session:
            secret = rotate(session, tenant, grace)
            session.commit()
    except CaptionqError as exc:
        raise fail(f"{exc.code}: {exc.message}", 2) from None
    if as_json:
        typer.echo(json.dumps({"tenant": tenant, "webhook_secret": secret, "grace_seconds": grace}))
    else:
        console.print(f"new webhook secret {secret} (old one valid for {grace} s more)")
