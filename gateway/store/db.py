"""Database engines: async for the API and the reconciler, sync for Alembic, the CLI and the catalog loader.

SQLite (the embedded default) gets WAL and a busy timeout so the API, the reconciler and a CLI can share the
file; it has no row locks, so a single writer at a time is what it gives and what we rely on there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from common.settings import Settings


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _ensure_sqlite_folder(url: str) -> None:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if database and database != ":memory:":
        from pathlib import Path

        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_sync_engine(settings: Settings) -> Engine:
    url = settings.database_url()
    if is_sqlite(url):
        _ensure_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def make_async_engine(settings: Settings) -> AsyncEngine:
    url = settings.async_database_url()
    if is_sqlite(url):
        _ensure_sqlite_folder(url)
        engine = create_async_engine(url, connect_args={"timeout": 10})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # Sized by the settings for the concurrency served (an overflow connection is closed when returned: churn
    # under load). No pre-ping: it costs a round trip per request; stale connections are recycled instead.
    # Timeouts: a database host that went silent (cut off, not down) answers 503 within them, not in minutes.
    timeouts = {
        "timeout": settings.gateway_db_connect_timeout_seconds,
        "command_timeout": settings.gateway_db_command_timeout_seconds,
    }
    return create_async_engine(
        url,
        pool_size=settings.gateway_db_pool_size,
        max_overflow=settings.gateway_db_max_overflow,
        pool_recycle=1800,
        connect_args=timeouts,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# The drivers' own "cannot reach the server" errors that escape SQLAlchemy's DBAPI wrapping: a refused or reset
# connection at connect time is a bare OSError from asyncio, and asyncpg raises its server-state errors
# ("the database system is shutting down", "... is starting up") unwrapped while connecting.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")  # connection exception, insufficient resources, operator action


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or anything in its chain) says the database cannot be reached now, as opposed to a bug.

    Used to answer 503 with Retry-After instead of a 500: the client may send the same request again.
    """
    from sqlalchemy import exc as sa_exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError | TimeoutError | sa_exc.TimeoutError | sa_exc.DisconnectionError):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str) and code[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
            return True
        if type(current).__module__.startswith("asyncpg") and type(current).__name__ in _ASYNCPG_UNAVAILABLE:
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


_ASYNCPG_UNAVAILABLE = {
    "ConnectionDoesNotExistError",
    "InterfaceError",
    "InternalClientError",
    "ConnectionFailureError",
}
