"""Mismatch triage behind the admin API and the CLI: accept a cluster of a migration's mismatches (a known,
intended difference) with a note and an expiry, withdraw the acceptance, list them.

An acceptance belongs to one migration's scope (a backend, or a content's override) and names a cluster by its
signature (`gateway.cutover.triage`); only a signature this scope's comparisons have shown can be accepted, so a
typo is a 404 rather than an acceptance of nothing. Every acceptance and withdrawal is a cutover event.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.cutover.stages import Scope
from gateway.cutover.triage import Acceptance, InvalidAcceptance, validate
from gateway.jobs.cutover_changes import InvalidCutover, event_dict
from gateway.jobs.cutover_gates import scope_filter
from gateway.jobs.errors import Conflict, NotFound
from gateway.store import cutover_configs as store
from gateway.store.models import Comparison, CutoverMigration, utcnow


async def _migration(session: AsyncSession, scope: Scope, key: str) -> CutoverMigration:
    try:
        ref = await store.resolve_scope(session, scope, key)
    except store.UnknownScope as exc:
        raise NotFound(str(exc)) from None
    row = await store.load(session, scope, ref.scope_id)
    if row is None:
        raise NotFound(f"no migration for {scope.value} {key}")
    return row


def expiry(now: datetime, expires_at: datetime | None, expires_in: timedelta | None) -> datetime:
    """Exactly one of an instant or a duration from now."""
    if (expires_at is None) == (expires_in is None):
        raise InvalidCutover("give exactly one of expires_at (an instant) or expires_in (a duration)")
    return expires_at if expires_at is not None else now + expires_in  # type: ignore[operator]


async def accept_cluster(
    sessions: async_sessionmaker[AsyncSession],
    scope: Scope,
    key: str,
    signature: str,
    actor: str,
    note: str,
    expires_at: datetime | None = None,
    expires_in: timedelta | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Accept (or re-accept with a new note and expiry) one cluster of this scope's mismatches."""
    now = now or utcnow()
    until = expiry(now, expires_at, expires_in)
    try:
        validate(signature, note, until, now)
    except InvalidAcceptance as exc:
        raise InvalidCutover(str(exc)) from None
    async with sessions() as session:
        row = await _migration(session, scope, key)
        seen = select(Comparison.id).where(scope_filter(store.to_config(row)), Comparison.signature == signature)
        if (await session.execute(seen.limit(1))).first() is None:
            raise NotFound(f"no comparison of {scope.value} {key} has the signature {signature}")
    acceptance = Acceptance(signature, note.strip(), until, actor, now)
    try:
        event = await store.save_acceptance(sessions, row, acceptance)
    except store.StaleChange as exc:
        raise Conflict(str(exc)) from None
    return {"acceptance": acceptance.to_dict(now), "event": event_dict(event)}


async def unaccept_cluster(
    sessions: async_sessionmaker[AsyncSession],
    scope: Scope,
    key: str,
    signature: str,
    actor: str,
    reason: str = "",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Withdraw an acceptance: the cluster's mismatches count against the gate again."""
    now = now or utcnow()
    async with sessions() as session:
        row = await _migration(session, scope, key)
    event = await store.delete_acceptance(sessions, row, signature, actor, reason, now)
    if event is None:
        raise NotFound(f"no acceptance of {signature} for {scope.value} {key}")
    return {"event": event_dict(event)}


async def list_acceptances(
    sessions: async_sessionmaker[AsyncSession], scope: Scope, key: str, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Every acceptance of this scope, expired ones too (`active` says which still count)."""
    now = now or utcnow()
    async with sessions() as session:
        row = await _migration(session, scope, key)
        found = await store.acceptances(session, scope, row.scope_id)
    return [a.to_dict(now) for a in sorted(found.values(), key=lambda a: a.expires_at)]
