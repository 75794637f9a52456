"""The reconciler's hot read: every open (sent, unfinished) leg's observed columns, a keyset page at a time.

A cycle reads every in-flight leg (10,000 on a deadline day) and almost none of them changed, so this read is
most of a cycle's own cost. On PostgreSQL it goes to asyncpg directly, through the pooled SQLAlchemy connection:
one prepared statement, plain records, no ORM rows or per-value type processing (the ORM path spent about a
third of a cycle turning rows into objects). SQLite (the embedded default) takes the same query through Core.
Nothing here is locked: the reconciler locks only the legs whose observation changes something.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.models import Leg


@dataclass(slots=True)
class ObservedLeg:
    """The columns of an open leg an engine observation may change (what `machine.needs_update` compares)."""

    id: str
    engine: str
    phase: str
    native_state: str | None
    progress: dict[str, Any] | None
    started_at: datetime | None
    worker: str | None
    queue: str | None
    engine_run_id: str | None
    last_error: str | None
    deadline: datetime | None


_COLUMNS = (
    Leg.id,
    Leg.engine,
    Leg.phase,
    Leg.native_state,
    Leg.progress,
    Leg.started_at,
    Leg.worker,
    Leg.queue,
    Leg.engine_run_id,
    Leg.last_error,
    Leg.deadline,
)

# The same statement for asyncpg (the leg table's own column names): dispatch state $1, ids after $2, at most $3.
_PG_PAGE = (
    "SELECT id, engine, phase, native_state, progress, started_at, worker, queue, engine_run_id, last_error, "
    "deadline FROM leg WHERE finished = false AND dispatch_state = $1 AND id > $2 ORDER BY id LIMIT $3"
)


async def page(
    sessions: async_sessionmaker[AsyncSession], dispatch_state: str, after: str, limit: int
) -> list[ObservedLeg]:
    """Unfinished legs in `dispatch_state` (the caller's: sent) with an id above `after`, in id order, at most
    `limit` of them."""
    engine = sessions.kw["bind"]
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            records = await raw.driver_connection.fetch(_PG_PAGE, dispatch_state, after, limit)
        # asyncpg gives timestamptz as aware UTC datetimes and json through SQLAlchemy's codec (decoded).
        return [ObservedLeg(*record) for record in records]
    stmt = (
        select(*_COLUMNS)
        .where(Leg.finished.is_(False), Leg.dispatch_state == dispatch_state, Leg.id > after)
        .order_by(Leg.id)
        .limit(limit)
    )
    async with sessions() as session:
        rows = (await session.execute(stmt)).all()
    return [ObservedLeg(*row) for row in rows]
