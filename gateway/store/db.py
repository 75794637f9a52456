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
    return create_async_engine(
        url,
        pool_size=settings.gateway_db_pool_size,
        max_overflow=settings.gateway_db_max_overflow,
        pool_recycle=1800,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
