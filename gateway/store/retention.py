"""Retention of the gateway's own rows: finished legs older than the retention period are deleted.

Only legs: the legacy `result` rows are what clients read and are never touched here. A leg still open is never
pruned, whatever its age. Deletion goes in small batches (one short transaction each, oldest first), so the
reconciler's process can prune a large backlog without holding locks or stalling its ticks.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.models import Leg


def _past(cutoff: datetime) -> list[object]:
    return [Leg.finished.is_(True), Leg.finished_at.is_not(None), Leg.finished_at < cutoff]


async def count_prunable(sessions: async_sessionmaker[AsyncSession], cutoff: datetime) -> int:
    """How many legs a prune would delete now (`gateway db prune --dry-run`)."""
    async with sessions() as session:
        return int(await session.scalar(select(func.count(Leg.id)).where(*_past(cutoff))) or 0)


async def prune_batch(sessions: async_sessionmaker[AsyncSession], cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` finished legs that ended before `cutoff`, oldest first; returns how many went."""
    async with sessions() as session, session.begin():
        ids = (
            (await session.execute(select(Leg.id).where(*_past(cutoff)).order_by(Leg.finished_at).limit(limit)))
            .scalars()
            .all()
        )
        if ids:
            await session.execute(delete(Leg).where(Leg.id.in_(ids), *_past(cutoff)))
    return len(ids)


async def prune(sessions: async_sessionmaker[AsyncSession], cutoff: datetime, batch: int) -> int:
    """Every batch until none is left (the CLI); returns the total deleted."""
    total = 0
    while True:
        deleted = await prune_batch(sessions, cutoff, batch)
        total += deleted
        if deleted < batch:
            return total
