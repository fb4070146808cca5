"""Helpers shared by the CLI commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from core.settings import Settings, load_settings

# soft_wrap: an error stays one line however narrow the terminal (or 80 columns off a terminal).
console = Console(stderr=True, soft_wrap=True)


def settings_or_exit(**overrides: Any) -> Settings:
    """Build the settings from the environment; a bad value is a one-line error, not a trace."""
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            console.print(f"[red]error:[/red] CAPTIONQ_{loc.upper()}: {err['msg']}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


@contextmanager
def database_reachable(settings: Settings) -> Iterator[None]:
    """A database that cannot be reached (wrong URL, server down, bad password) ends the command
    with one line, exit 2, instead of SQLAlchemy's traceback."""
    import sqlalchemy as sa

    try:
        yield
    except sa.exc.OperationalError as exc:
        url = sa.engine.make_url(settings.database_url).render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise fail(f"cannot use the database at {url}: {reason}", 2) from None
