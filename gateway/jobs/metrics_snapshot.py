"""What `/metrics` reads from the store per refresh: the open legs by group and every migration's stage."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.cutover_configs import StageRow, stage_rows
from gateway.store.leg_stats import OpenLegGroup, open_leg_groups


@dataclass(frozen=True)
class StoreSnapshot:
    groups: list[OpenLegGroup]
    stages: list[StageRow]


async def store_snapshot(sessions: async_sessionmaker[AsyncSession]) -> StoreSnapshot:
    """Two queries in one session: one grouped over the open legs, one over the migrations."""
    async with sessions() as session:
        return StoreSnapshot(await open_leg_groups(session), await stage_rows(session))
