"""``captionq keys``: tenant API keys and webhook signing secrets."""

from __future__ import annotations

import json

import typer

from cli.common import console, database_reachable, fail, settings_or_exit

app = typer.Typer(help="Create, list and revoke tenant API keys; rotate webhook signing secrets.",
                  no_args_is_help=True)


@app.command("create")
def create(
    name: str | None = typer.Option(None, "--name", help="Tenant name (unique): a new tenant is created, "
                                                         "its first key with every scope."),
    tenant: str | None = typer.Option(None, "--tenant", help="An existing tenant (id or name): one more key."),
    scopes: str | None = typer.Option(None, "--scopes", help="With --tenant: comma-separated scopes among "
                                                            "submit, read, admin (default: submit,read)."),
    label: str | None = typer.Option(None, "--label", help="With --tenant: a name for the key."),
    as_json: bool = typer.Option(False, "--json", help='Print {"tenant", "api_key", ...} as JSON.'),
) -> None:
    """Create a tenant and its API key (--name), or another key for a tenant (--tenant). The key
    (and a new tenant's webhook secret) is printed ONCE: only a hash of the key is stored."""
    from core.db import Database
    from core.errors import CaptionqError
    from jobs.api_keys import key_to_dict, parse_scopes
    from jobs.tenants import create_api_key, new_key_for

    if (name is None) == (tenant is None):
        raise fail("give exactly one of --name (a new tenant) and --tenant (a key for an existing one)", 2)
    if name is not None and (scopes is not None or label is not None):
        raise fail("--scopes and --label go with --tenant (a new tenant's first key has every scope)", 2)
    settings = settings_or_exit()
    db = Database(settings)
    try:
        stored_scopes = parse_scopes(scopes) if tenant is not None else ""
        with database_reachable(settings), db.session() as session:
            if tenant is not None:
                row, made = new_key_for(session, tenant, stored_scopes, label)
                info = key_to_dict(row)
            else:
                assert name is not None
                created = create_api_key(session, name)
            session.commit()
    except CaptionqError as exc:
        raise fail(f"{exc.code}: {exc.message}", 2) from None
    if tenant is not None:
        if as_json:
            typer.echo(json.dumps({"tenant": made.tenant_id, "api_key": made.api_key, "id": info["id"],
                                   "scopes": info["scopes"], "name": info["name"]}))
            return
        console.print(f"tenant   {made.tenant_id}")
        console.print(f"key id   {info['id']}  scopes {' '.join(info['scopes'])}")
        console.print(f"api key  {made.api_key}")
        console.print("[dim]Store it now: it is not shown again.[/dim]")
        return
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


@app.command("list")
def list_cmd(
    tenant: str = typer.Option(..., "--tenant", help="Tenant id or name."),
    active: bool = typer.Option(False, "--active", help="Only keys that are not revoked."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
) -> None:
    """A tenant's keys: id, name, scopes, created, last used (to within a minute), revoked."""
    from core.db import Database
    from core.errors import CaptionqError
    from jobs.api_keys import key_to_dict, list_keys
    from jobs.tenants import find_tenant

    settings = settings_or_exit()
    db = Database(settings)
    try:
        with database_reachable(settings), db.session() as session:
            rows = [key_to_dict(k) for k in list_keys(session, find_tenant(session, tenant).id,
                                                      include_revoked=not active)]
    except CaptionqError as exc:
        raise fail(f"{exc.code}: {exc.message}", 2) from None
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for k in rows:
        state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
        console.print(f"{k['id']}  {' '.join(k['scopes']):<18} {state:<36} last used {k['last_used_at'] or 'never'}"
                      f"  {k['name'] or ''}", highlight=False)
    if not rows:
        console.print("no keys")


@app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key id (key_…), as `keys list` shows it."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Revoke a key. Every API process refuses it within CAPTIONQ_AUTH_CACHE_SECONDS (30 s)."""
    from core.db import Database
    from core.errors import CaptionqError
    from jobs.api_keys import key_to_dict, revoke_key

    settings = settings_or_exit()
    db = Database(settings)
    try:
        with database_reachable(settings), db.session() as session:
            info = key_to_dict(revoke_key(session, key_id))
            session.commit()
    except CaptionqError as exc:
        raise fail(f"{exc.code}: {exc.message}", 2) from None
    if as_json:
        typer.echo(json.dumps(info))
    else:
        console.print(f"{key_id} revoked at {info['revoked_at']} (refused within "
                      f"{settings.auth_cache_seconds:g} s by every API process)")
