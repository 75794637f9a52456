"""Reads of legs that the API's answers need: a job's newest leg in a role, a job's legs, the engine types in use."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.models import ExecutionBackend, Leg, Result


async def newest_run_id(sessions: async_sessionmaker[AsyncSession], result_id: str, role: str) -> str | None:
    """The run id of the job's newest leg in `role` (a `gateway.legs.states.LegRole`), if any: the engine's (a
    Prefect flow run id) once it has one, else the gateway's leg id."""
    async with sessions() as session:
        found = await session.execute(
            select(Leg.id, Leg.engine_run_id)
            .where(Leg.result_id == result_id, Leg.role == role)
            .order_by(Leg.created_at.desc())
            .limit(1)
        )
        first = found.first()
    return (first.engine_run_id or first.id) if first is not None else None


async def job_legs(sessions: async_sessionmaker[AsyncSession], result_id: str) -> tuple[Result, list[Leg]] | None:
    """A job's row and every leg of it, oldest first; None when the row does not exist."""
    async with sessions() as session:
        row = await session.get(Result, result_id)
        if row is None:
            return None
        legs = await session.execute(select(Leg).where(Leg.result_id == result_id).order_by(Leg.created_at))
        return row, list(legs.scalars())


async def backend_types(sessions: async_sessionmaker[AsyncSession]) -> set[str]:
    """The distinct `type` of every execution backend in the catalog."""
    async with sessions() as session:
        return set((await session.execute(select(ExecutionBackend.type).distinct())).scalars().all())
