"""``captionq migrate``: Alembic ``upgrade head`` on the configured database.

Configuration is built in code from a :class:`Settings` (never from ``os.environ``), so the same
function serves the CLI, local mode and the tests.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from core.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["settings"] = settings
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database named by ``settings.database_url`` up to ``revision``."""
    if settings.sqlalchemy_url.startswith("sqlite"):
        _ensure_sqlite_dir(settings.sqlalchemy_url)
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(settings), revision)


def current(settings: Settings) -> str | None:
    """The revision the database is at (None when never migrated)."""
    from alembic.runtime.migration import MigrationContext

    from core.db import make_engine

    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _ensure_sqlite_dir(url: str) -> None:
    # sqlite:///relative/path.db or sqlite:////abs/path.db; in-memory databases need nothing.
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:" and not path.startswith("file:"):
        Path(path.split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
