"""The gate's tally read back: one stage's live comparisons counted per class without reading them.

`gate_tally` is kept by triggers on `comparison` (migration 0016), in the transaction that writes, re-classifies or
deletes a comparison: whatever changes a comparison changes its count, so the counts are the comparisons' own.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.store.models import GateTally


@dataclass(frozen=True)
class TallyRow:
    """One class of a stage's live comparisons (`side`, `signature`: None where the comparisons have none)."""

    primary_engine: str
    shadow_engine: str
    outcome: str
    side: str | None
    signature: str | None
    n: int
    primary_timed: int  # of them, with the primary leg's run time
    shadow_timed: int
    environment_differs: int


async def tally(
    session: AsyncSession, scope: str, scope_id: str, stage: str, version: int, engines: tuple[str, str]
) -> list[TallyRow]:
    """The live comparisons routed by one migration's stage and config version between the two engines (either
    way round, never an engine with itself), per class."""
    stmt = select(
        GateTally.primary_engine,
        GateTally.shadow_engine,
        GateTally.outcome,
        GateTally.side,
        GateTally.signature,
        GateTally.n,
        GateTally.primary_timed,
        GateTally.shadow_timed,
        GateTally.environment_differs,
    ).where(
        GateTally.scope == scope,
        GateTally.scope_id == scope_id,
        GateTally.stage == stage,
        GateTally.version == version,
        GateTally.primary_engine.in_(engines),
        GateTally.shadow_engine.in_(engines),
        GateTally.primary_engine != GateTally.shadow_engine,
        GateTally.n > 0,
    )
    rows = (await session.execute(stmt)).all()
    return [
        TallyRow(p, s, outcome, side or None, signature or None, int(n), int(pt), int(st), int(env))
        for p, s, outcome, side, signature, n, pt, st, env in rows
    ]
