"""Pause and resume a migration's automation, behind the admin API and the CLI (`gateway cutover pause|resume`).

A manual rollback or demotion pauses automation on its own (`gateway.cutover.hold`); `pause` does it without a
stage change, `resume` lets the gate promote again. Each is an event in the migration's log; `hold_status` is
what the scorecard, `gateway cutover status` and the console show.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.cutover.hold import HoldAction
from gateway.cutover.stages import Scope
from gateway.jobs.cutover_changes import event_dict
from gateway.jobs.errors import Conflict, NotFound
from gateway.store import cutover_configs as store
from gateway.store import cutover_holds
from gateway.store.models import CutoverMigration, utcnow


async def _migration(session: AsyncSession, scope: Scope, key: str) -> CutoverMigration:
    try:
        ref = await store.resolve_scope(session, scope, key)
    except store.UnknownScope as exc:
        raise NotFound(str(exc)) from None
    row = await store.load(session, scope, ref.scope_id)
    if row is None:
        raise NotFound(f"no migration for {scope.value} {key}")
    return row


async def hold_status(sessions: async_sessionmaker[AsyncSession], scope: Scope, scope_id: str) -> dict[str, Any]:
    """{"paused": bool, "hold": {...} | None}: the one source of whether automation is paused."""
    async with sessions() as session:
        hold = await cutover_holds.current_hold(session, scope, scope_id)
    return {"paused": hold is not None, "hold": hold.to_dict() if hold else None}


async def hold_of_scope(sessions: async_sessionmaker[AsyncSession], scope: Scope, key: str) -> dict[str, Any]:
    """`hold_status` of a migration named by its scope's key (a backend's slug or id, a content's path or id)."""
    async with sessions() as session:
        row = await _migration(session, scope, key)
    return await hold_status(sessions, scope, row.scope_id)


async def set_hold(
    sessions: async_sessionmaker[AsyncSession],
    scope: Scope,
    key: str,
    action: HoldAction,
    actor: str,
    reason: str = "",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Pause or resume; pausing a paused migration (or resuming a running one) is refused (409), not logged."""
    now = now or utcnow()
    async with sessions() as session:
        row = await _migration(session, scope, key)
        hold = await cutover_holds.current_hold(session, scope, row.scope_id)
    if (hold is not None) == (action == HoldAction.PAUSE):
        state = "paused" if hold is not None else "not paused"
        raise Conflict(f"automation of {scope.value} {key} is already {state}")
    event = await cutover_holds.save_hold_event(sessions, row, store.to_config(row), action, actor, reason, now)
    return {"event": event_dict(event), **await hold_status(sessions, scope, row.scope_id)}
