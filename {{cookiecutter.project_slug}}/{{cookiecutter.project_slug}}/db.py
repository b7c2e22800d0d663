"""The database engine: one connection pool per process, created on first use."""

import sqlite3
from contextlib import closing
from functools import cache

from sqlalchemy import Engine, create_engine, make_url, text

from . import settings


@cache
def engine(url: str | None = None) -> Engine:
    """Return this process's engine for url (default DATABASE_URL), created after fork."""
    return create_engine(url or settings.DATABASE_URL, pool_pre_ping=True)


def ping(url: str | None = None) -> None:
    """Run a trivial query; raises when the database is unreachable or, for SQLite, cannot be written."""
    url = url or settings.DATABASE_URL
    with engine(url).connect() as connection:
        connection.execute(text("SELECT 1"))
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        _probe_sqlite_write(parsed.database)


def _probe_sqlite_write(path: str) -> None:
    """Start a write that changes nothing and roll it back.

    SELECT 1 never touches an SQLite file: a full disk, a read-only mount or a data directory the
    service may not write would pass it while every write fails. Setting user_version to its own
    value makes SQLite create its journal beside the file and write to it, as a real write does.
    A connection of its own, not the pool's: the pool's connections stay in their default mode.
    """
    with closing(sqlite3.connect(path, isolation_level=None, timeout=2)) as connection:
        connection.execute("BEGIN IMMEDIATE")
        try:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            connection.execute(f"PRAGMA user_version = {int(version)}")
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
