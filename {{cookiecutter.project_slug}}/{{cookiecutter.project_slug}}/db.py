"""The database engine: one connection pool per process, created on first use."""

from functools import cache

from sqlalchemy import Engine, create_engine, text

from . import settings


@cache
def engine(url: str | None = None) -> Engine:
    """Return this process's engine for url (default DATABASE_URL), created after fork."""
    return create_engine(url or settings.DATABASE_URL, pool_pre_ping=True)


def ping(url: str | None = None) -> None:
    """Run a trivial query; raises when the database is unreachable."""
    with engine(url).connect() as connection:
        connection.execute(text("SELECT 1"))
