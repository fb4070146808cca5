"""Alembic environment: the same migrations for PostgreSQL and SQLite.

``core.migrate.upgrade(settings)`` passes the database URL in ``config.attributes``; only a bare
``alembic`` command line (an entry point of its own) falls back to loading settings.
"""

from __future__ import annotations

from alembic import context

import jobs.tables  # noqa: F401  (registers the tables on Base.metadata)
from core.db import Base, make_engine
from core.settings import Settings, load_settings

config = context.config
target_metadata = Base.metadata


def _settings() -> Settings:
    settings = config.attributes.get("settings")
    return settings if isinstance(settings, Settings) else load_settings()


def run_migrations_offline() -> None:
    url = _settings().sqlalchemy_url
    context.configure(
        url=url, target_metadata=target_metadata, literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_settings())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection, target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
