"""The database engine and sessions: one connection pool per process, created on first use."""

import atexit
import sqlite3
from contextlib import closing

from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session

from . import settings

_engines: dict[str, Engine] = {}


def sqlalchemy_url(url: str) -> URL:
    """The URL SQLAlchemy connects with: postgresql:// means psycopg 3 (SQLAlchemy's default is psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def engine(url: str | None = None) -> Engine:
    """Return this process's engine for url (default DATABASE_URL), created after fork."""
    url = url or settings.DATABASE_URL
    if url not in _engines:
        created = create_engine(sqlalchemy_url(url), pool_pre_ping=True)
        if created.dialect.name == "sqlite":
            event.listen(created, "connect", _sqlite_pragmas)
        _engines[url] = created
    return _engines[url]


def _sqlite_pragmas(connection, _record) -> None:
    """A write waits up to 15 s for the one before it (SQLite's default here: 5 s).

    Under 10 clients per host, a third of them writing, and a deploy's checks beside them, a POST
    waited out 5 s and answered 500 "database is locked". (WAL mode would also spare writes from
    waiting for reads, but a write then no longer needs the data directory, which /health's write
    probe relies on to see a read-only one.)
    """
    cursor = connection.cursor()
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()


def session() -> Session:
    """A session on DATABASE_URL; use it as `with db.session() as session, session.begin():`."""
    return Session(engine(), expire_on_commit=False)


@atexit.register
def dispose() -> None:
    """Close every pooled connection of this process and forget its engines (at exit, and in tests).

    A connection left to the garbage collector is never closed properly: Python 3.13 warns about
    each such SQLite connection, and PostgreSQL sees a client vanish.
    """
    while _engines:
        _engines.popitem()[1].dispose()


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
