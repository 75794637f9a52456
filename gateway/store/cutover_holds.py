"""Persistence of the operator's hold on automation: read the migration's log, write `pause`/`resume` events.

The rule (what pauses, what resumes) is pure, in `gateway.cutover.hold`; the hold has no column of its own:
it is whatever the log says, so the log and the hold cannot disagree.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.cutover.hold import Hold, HoldAction, LogEntry, hold_of
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import CutoverConfig, Scope
from gateway.store.models import CutoverEvent, CutoverMigration, new_id

# The actions that can say anything about the hold (triage and configure events never do).
HOLD_ACTIONS = (
    HoldAction.PAUSE.value,
    HoldAction.RESUME.value,
    Action.DEMOTE.value,
    Action.ROLLBACK.value,
    Action.SET.value,
)
LOOK_BACK = 50


async def current_hold(session: AsyncSession, scope: Scope, scope_id: str) -> Hold | None:
    """The hold in force for this migration (None: automation runs)."""
    stmt = (
        select(
            CutoverEvent.action,
            CutoverEvent.actor,
            CutoverEvent.at,
            CutoverEvent.from_stage,
            CutoverEvent.to_stage,
            CutoverEvent.reason,
        )
        .where(
            CutoverEvent.scope == scope.value,
            CutoverEvent.scope_id == scope_id,
            CutoverEvent.action.in_(HOLD_ACTIONS),
        )
        .order_by(CutoverEvent.at.desc(), CutoverEvent.version.desc())
        .limit(LOOK_BACK)
    )
    rows = (await session.execute(stmt)).all()
    return hold_of(LogEntry(a, actor, at, f, t, reason or "") for a, actor, at, f, t, reason in rows)


async def save_hold_event(
    sessions: async_sessionmaker[AsyncSession],
    row: CutoverMigration,
    config: CutoverConfig,
    action: HoldAction,
    actor: str,
    reason: str,
    now: datetime,
) -> CutoverEvent:
    """A `pause` or `resume` event: the config as it is (the hold changes neither stage nor version)."""
    event = CutoverEvent(
        id=new_id(),
        migration_id=row.id,
        scope=row.scope,
        scope_id=row.scope_id,
        version=row.version,
        action=action.value,
        actor=actor,
        at=now,
        from_stage=row.stage,
        to_stage=row.stage,
        from_config=config.to_dict(),
        to_config=config.to_dict(),
        reason=reason,
    )
    async with sessions() as session, session.begin():
        session.add(event)
    return event
