"""Database engine and sessions, built once from :class:`core.settings.Settings`.

PostgreSQL in production, SQLite in the embedded local mode; the code above this module is the
same for both. SQLite gets WAL, a busy timeout and foreign keys so that the API, the worker and
the sweeper (separate processes in local mode) can share one file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from core.settings import Settings

# Constraint names that Alembic can rely on for both dialects (batch mode on SQLite needs them).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on both dialects.

    SQLite has no time zones, so values are stored naive in UTC and made aware again on the way
    out; on PostgreSQL this is ``timestamptz``.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON: JSONB on PostgreSQL (smaller, indexable), JSON text elsewhere.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


_IDLE_SINCE = "captionq_idle_since"


def ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout only when it sat in the pool for ``idle_seconds``.

    ``pool_pre_ping`` costs a round trip on every checkout — three of them on one job's critical
    path. What it protects against is a connection that died while idle in the pool (database
    restart or failover, an idle timeout in a proxy or firewall, ``pg_terminate_backend``). Each
    of those takes a connection that has been idle for longer than a second or so: a restart
    takes seconds, and while the server is down a fresh connection fails as well, so skipping the
    ping for a connection checked in within the last ``idle_seconds`` hands out no connection
    that the ping would have saved — except one terminated individually in that second, which
    fails its request as any connection dying mid-request would. A failed ping raises
    ``DisconnectionError``, on which the pool discards that connection and checks out another
    (SQLAlchemy's pessimistic-disconnect recipe), so the caller still never sees a dead one.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < idle_seconds:
            return  # a new connection, or one in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)  # the same ping pool_pre_ping sends
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    idle = float(settings.db_ping_idle_seconds)
    opts: dict[str, Any] = {"pool_pre_ping": idle <= 0, "pool_size": settings.db_pool_size,
                            "max_overflow": settings.db_max_overflow}
    opts.update(kwargs)
    engine = sa.create_engine(url, **opts)
    if idle > 0 and not opts["pool_pre_ping"]:
        ping_when_idle(engine, idle)
    return engine


@contextmanager
def _transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session from ``factory`` that commits when the block ends normally, else rolls back."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


class Database:
    """An engine plus a session factory. One per process, made at the entry point."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._relaxed: sessionmaker[Session] | None = None
        self._relaxed_engine: Engine | None = None
        self._relaxed_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends normally and rolls back on error.

        Calling ``session.commit()`` inside the block is allowed (it ends that transaction and a
        new one begins on next use).
        """
        with _transaction(self.sessionmaker) as session:
            yield session

    @contextmanager
    def relaxed_session(self) -> Iterator[Session]:
        """:meth:`session` whose commit does not wait for the WAL flush (PostgreSQL: a second pool
        of connections opened with ``synchronous_commit=off``, so no extra ``SET`` round trip;
        elsewhere the same as :meth:`session`). Only for a transaction whose loss in a database
        crash is noticed and repaired — the worker's claim (see ``JobService.start``). Later
        synchronous commits on the server flush it too."""
        factory = self._relaxed_sessionmaker() if self.dialect == "postgresql" else self.sessionmaker
        with _transaction(factory) as session:
            yield session

    def _relaxed_sessionmaker(self) -> sessionmaker[Session]:
        with self._relaxed_lock:
            if self._relaxed is None:
                self._relaxed_engine = make_engine(
                    self.settings, connect_args={"options": "-c synchronous_commit=off"})
                self._relaxed = sessionmaker(self._relaxed_engine, expire_on_commit=False, autoflush=False)
            return self._relaxed

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        with self._relaxed_lock:
            if self._relaxed_engine is not None:
                self._relaxed_engine.dispose()
