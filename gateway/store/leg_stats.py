"""What the open legs look like right now, in one grouped query: the store side of `/metrics`.

Only unfinished legs are read (the `ix_leg_open` index: finished, dispatch_state), so the cost follows the
number of legs in flight, not the size of the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.store.models import Leg


@dataclass(frozen=True)
class OpenLegGroup:
    """Open legs of one engine, role, outbox state and phase: how many, and the oldest of them."""

    engine: str
    role: str
    dispatch_state: str
    phase: str
    count: int
    oldest_created: datetime | None
    oldest_dispatched: datetime | None
    # With an error noted: for sent legs, the engine said nothing runs them any more (a Late run, a runner gone).
    with_error: int = 0


OPEN_LEGS = (
    select(
        Leg.engine,
        Leg.role,
        Leg.dispatch_state,
        Leg.phase,
        func.count(),
        func.min(Leg.created_at),
        func.min(Leg.dispatched_at),
        func.count(Leg.last_error),
    )
    .where(Leg.finished.is_(False))
    .group_by(Leg.engine, Leg.role, Leg.dispatch_state, Leg.phase)
)


async def open_leg_groups(session: AsyncSession) -> list[OpenLegGroup]:
    rows = (await session.execute(OPEN_LEGS)).all()
    return [OpenLegGroup(*row) for row in rows]
