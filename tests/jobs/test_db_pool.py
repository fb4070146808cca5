"""The connection pool's ping policy against a real PostgreSQL: a pooled connection that died while
idle is replaced at checkout, and one used a moment ago is handed out without a round trip."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from core.db import Database
from core.settings import Settings


def _backend_pid(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    admin.dispose()


def _count_pings(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = db.engine.dialect.do_ping

    def counting(dbapi_conn: Any) -> bool:
        calls.append(1)
        return real(dbapi_conn)

    monkeypatch.setattr(db.engine.dialect, "do_ping", counting)
    return calls


def _db(pg_database: Any, idle: float) -> Database:
    return Database(Settings(database_url=pg_database.url, db_ping_idle_seconds=idle))


def test_connection_killed_while_idle_is_replaced(pg_database: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _db(pg_database, 0.05)
    try:
        pid = _backend_pid(db)
        _terminate(pg_database.url, pid)
        time.sleep(0.1)  # idle past the threshold: the next checkout pings, finds it dead
        pings = _count_pings(db, monkeypatch)
        assert _backend_pid(db) != pid  # served by a fresh connection, no error
        assert pings == [1]
    finally:
        db.dispose()


def test_recently_used_connection_is_not_pinged(pg_database: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _db(pg_database, 60.0)
    try:
        pid = _backend_pid(db)
        pings = _count_pings(db, monkeypatch)
        for _ in range(3):
            assert _backend_pid(db) == pid  # the same connection, straight back to work
        assert pings == []
    finally:
        db.dispose()


def test_zero_means_ping_on_every_checkout(pg_database: Any) -> None:
    db = _db(pg_database, 0)
    try:
        assert db.engine.pool._pre_ping  # SQLAlchemy's own pre-ping
        pid = _backend_pid(db)
        _terminate(pg_database.url, pid)
        assert _backend_pid(db) != pid
    finally:
        db.dispose()
