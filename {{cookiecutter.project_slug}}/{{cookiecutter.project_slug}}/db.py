"""The database engine: one connection pool per process, created on first use."""

from functools import cache

from sqlalchemy import Engine, create_engine, text

from . import settings


@cache
def engine() -> Engine:
    """Return this process's engine (created after fork, so workers never share sockets)."""
    return create_engine(settings.DATABASE_URL, pool_pre_ping=True)


def ping() -> None:
    """Run a trivial query; raises when the database is unreachable."""
    with engine().connect() as connection:
        connection.execute(text("SELECT 1"))
