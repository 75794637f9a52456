"""Cutover configs as data: load and save migrations, with a version check and an event for every change.

The rules live in `gateway.cutover` (pure); this module only persists what they decided. A change names the
version it was planned on and is saved only if the row is still at that version (`StaleChange` otherwise),
in the same transaction as its event, so the log and the config never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backends.registry import UnknownEngineError, canonical_engine
from gateway.cutover.stage_machine import Change
from gateway.cutover.stages import AnswerPolicy, CutoverConfig, GateThresholds, Policy, Scope, Stage
from gateway.cutover.triage import Acceptance, TriageAction
from gateway.store import lookup
from gateway.store.catalog_cache import CatalogCache
from gateway.store.models import (
    CourseContent,
    CutoverAcceptance,
    CutoverEvent,
    CutoverMigration,
    ExecutionBackend,
    new_id,
    utcnow,
)


class StaleChange(RuntimeError):
    """The migration changed since this change was planned (another operator, or the gate)."""


class UnknownScope(LookupError):
    """No execution backend (by id or slug) or course content (by id or path) with this key."""


@dataclass(frozen=True)
class ScopeRef:
    """A resolved scope: its id, and the engine its backend's legacy `type` names (the default old engine)."""

    scope: Scope
    scope_id: str
    label: str
    legacy_engine: str | None


def to_config(row: CutoverMigration) -> CutoverConfig:
    return CutoverConfig(
        scope=Scope(row.scope),
        scope_id=row.scope_id,
        old_engine=row.old_engine,
        new_engine=row.new_engine,
        stage=Stage(row.stage),
        percentage=row.percentage,
        shadow_fraction=row.shadow_fraction,
        policy=Policy(row.policy),
        answer_policy=AnswerPolicy(row.answer_policy or AnswerPolicy.VERIFIED.value),
        canary_steps=tuple(row.canary_steps),
        min_stage_seconds=row.min_stage_seconds,
        thresholds=GateThresholds.from_dict(row.thresholds),
        salt=row.salt,
        version=row.version,
        stage_since=row.stage_since,
    )


def _columns(config: CutoverConfig) -> dict[str, Any]:
    return {
        "old_engine": config.old_engine,
        "new_engine": config.new_engine,
        "stage": config.stage.value,
        "percentage": config.percentage,
        "shadow_fraction": config.shadow_fraction,
        "policy": config.policy.value,
        "answer_policy": config.answer_policy.value,
        "canary_steps": list(config.canary_steps),
        "min_stage_seconds": config.min_stage_seconds,
        "thresholds": config.thresholds.to_dict(),
        "salt": config.salt,
        "version": config.version,
        "stage_since": config.stage_since,
    }


def _engine(name: str | None) -> str | None:
    try:
        return canonical_engine(name or "")
    except UnknownEngineError:
        return None


async def resolve_scope(session: AsyncSession, scope: Scope, key: str) -> ScopeRef:
    if scope == Scope.BACKEND:
        backend = (await session.execute(select(ExecutionBackend).where(lookup.backend_named(key)).limit(1))).scalar()
        if backend is None:
            raise UnknownScope(f"execution backend not found: {key}")
        return ScopeRef(scope, backend.id, backend.slug, _engine(backend.type))
    found = (
        await session.execute(
            select(CourseContent, ExecutionBackend)
            .outerjoin(ExecutionBackend, ExecutionBackend.id == CourseContent.execution_backend_id)
            .where(lookup.content_named(key))
            .limit(1)
        )
    ).first()
    if found is None:
        raise UnknownScope(f"course content not found: {key}")
    content, backend = found
    return ScopeRef(scope, content.id, content.path, _engine(backend.type if backend else None))


async def load(session: AsyncSession, scope: Scope, scope_id: str) -> CutoverMigration | None:
    stmt = select(CutoverMigration).where(CutoverMigration.scope == scope.value, CutoverMigration.scope_id == scope_id)
    return (await session.execute(stmt)).scalar()


async def effective_config(
    sessions: async_sessionmaker[AsyncSession], cache: CatalogCache, backend_id: str | None, content_id: str | None
) -> CutoverConfig | None:
    """The content's override if it has one, else its backend's migration, else None (legacy routing).

    Cached with the catalog (a change in this process clears it at once; other processes see it within the
    catalog cache's TTL). "No migration" is cached too: it is the common case and must cost nothing.
    """
    key = ("cutover", backend_id or "", content_id or "")
    hit: tuple[CutoverConfig | None] | None = cache.get(key)
    if hit is not None:
        return hit[0]
    stmt = select(CutoverMigration).where(
        ((CutoverMigration.scope == Scope.CONTENT.value) & (CutoverMigration.scope_id == (content_id or "")))
        | ((CutoverMigration.scope == Scope.BACKEND.value) & (CutoverMigration.scope_id == (backend_id or "")))
    )
    async with sessions() as session:
        rows = list((await session.execute(stmt)).scalars())
    rows.sort(key=lambda r: r.scope != Scope.CONTENT.value)  # the content's override first
    config = to_config(rows[0]) if rows else None
    cache.put(key, (config,))
    return config


async def save_change(
    sessions: async_sessionmaker[AsyncSession],
    change: Change,
    actor: str,
    evaluation: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> CutoverEvent | None:
    """Persist a planned change and its event in one transaction; None for a no-op."""
    if change.is_noop:
        return None
    now = now or utcnow()
    before, after = change.before, change.after
    async with sessions() as session, session.begin():
        if before.version == 0:  # a new migration
            row = CutoverMigration(
                id=new_id(),
                scope=after.scope.value,
                scope_id=after.scope_id,
                created_at=now,
                updated_at=now,
                updated_by=actor,
                **_columns(after),
            )
            session.add(row)
            migration_id = row.id
            try:
                await session.flush()
            except IntegrityError:  # the unique (scope, scope_id): created meanwhile
                raise StaleChange("a migration for this scope was created meanwhile") from None
        else:
            done = await session.execute(
                update(CutoverMigration)
                .where(
                    CutoverMigration.scope == after.scope.value,
                    CutoverMigration.scope_id == after.scope_id,
                    CutoverMigration.version == before.version,
                )
                .values(updated_at=now, updated_by=actor, **_columns(after))
                .returning(CutoverMigration.id)
            )
            found = done.scalar()
            if found is None:
                raise StaleChange(f"the migration is no longer at version {before.version}")
            migration_id = found
        event = CutoverEvent(
            id=new_id(),
            migration_id=migration_id,
            scope=after.scope.value,
            scope_id=after.scope_id,
            version=after.version,
            action=change.action.value,
            actor=actor,
            at=now,
            from_stage=before.stage.value if before.version else None,
            to_stage=after.stage.value,
            from_config=before.to_dict() if before.version else None,
            to_config=after.to_dict(),
            reason=change.reason,
            evaluation=evaluation,
        )
        session.add(event)
    return event


def to_acceptance(row: CutoverAcceptance) -> Acceptance:
    return Acceptance(row.signature, row.note, row.expires_at, row.accepted_by, row.accepted_at)


async def acceptances(session: AsyncSession, scope: Scope, scope_id: str) -> dict[str, Acceptance]:
    """Every acceptance of this scope, expired ones too (by signature)."""
    stmt = select(CutoverAcceptance).where(
        CutoverAcceptance.scope == scope.value, CutoverAcceptance.scope_id == scope_id
    )
    return {row.signature: to_acceptance(row) for row in (await session.execute(stmt)).scalars()}


def _triage_event(
    row: CutoverMigration, action: TriageAction, actor: str, now: datetime, reason: str, cluster: dict[str, Any]
) -> CutoverEvent:
    """A triage event: the migration's stage and config as they are (triage changes neither), and the cluster."""
    config = to_config(row)
    return CutoverEvent(
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
        cluster=cluster,
    )


def _cluster(acceptance: Acceptance) -> dict[str, Any]:
    return {"signature": acceptance.signature, "note": acceptance.note, "expires_at": acceptance.expires_at.isoformat()}


async def save_acceptance(
    sessions: async_sessionmaker[AsyncSession], row: CutoverMigration, acceptance: Acceptance
) -> CutoverEvent:
    """Accept a cluster (or replace its note and expiry), with its event, in one transaction."""
    async with sessions() as session, session.begin():
        stmt = select(CutoverAcceptance).where(
            CutoverAcceptance.scope == row.scope,
            CutoverAcceptance.scope_id == row.scope_id,
            CutoverAcceptance.signature == acceptance.signature,
        )
        found = (await session.execute(stmt.with_for_update())).scalar()
        cluster = _cluster(acceptance)
        if found is None:
            session.add(
                CutoverAcceptance(
                    id=new_id(),
                    migration_id=row.id,
                    scope=row.scope,
                    scope_id=row.scope_id,
                    signature=acceptance.signature,
                    note=acceptance.note,
                    expires_at=acceptance.expires_at,
                    accepted_by=acceptance.accepted_by,
                    accepted_at=acceptance.accepted_at,
                )
            )
        else:
            cluster["replaces"] = _cluster(to_acceptance(found))
            found.note, found.expires_at = acceptance.note, acceptance.expires_at
            found.accepted_by, found.accepted_at = acceptance.accepted_by, acceptance.accepted_at
        event = _triage_event(
            row, TriageAction.ACCEPT, acceptance.accepted_by, acceptance.accepted_at, acceptance.note, cluster
        )
        session.add(event)
        try:
            await session.flush()
        except IntegrityError:  # the same cluster accepted at the same moment by someone else
            raise StaleChange("this cluster was accepted meanwhile") from None
    return event


async def delete_acceptance(
    sessions: async_sessionmaker[AsyncSession],
    row: CutoverMigration,
    signature: str,
    actor: str,
    reason: str,
    now: datetime,
) -> CutoverEvent | None:
    """Withdraw an acceptance (its mismatches count again), with its event; None if there was none."""
    async with sessions() as session, session.begin():
        stmt = select(CutoverAcceptance).where(
            CutoverAcceptance.scope == row.scope,
            CutoverAcceptance.scope_id == row.scope_id,
            CutoverAcceptance.signature == signature,
        )
        found = (await session.execute(stmt.with_for_update())).scalar()
        if found is None:
            return None
        event = _triage_event(row, TriageAction.UNACCEPT, actor, now, reason, _cluster(to_acceptance(found)))
        await session.delete(found)
        session.add(event)
    return event


async def record_evaluation(
    sessions: async_sessionmaker[AsyncSession], config: CutoverConfig, evaluation: dict[str, Any], at: datetime
) -> None:
    """The last evaluation is kept on the migration (not as an event: evaluations that change nothing are many)."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(CutoverMigration)
            .where(CutoverMigration.scope == config.scope.value, CutoverMigration.scope_id == config.scope_id)
            .values(last_evaluation=evaluation, last_evaluated_at=at)
        )


async def history(
    sessions: async_sessionmaker[AsyncSession], scope: Scope | None = None, scope_id: str | None = None, limit: int = 50
) -> list[CutoverEvent]:
    stmt = select(CutoverEvent).order_by(CutoverEvent.at.desc(), CutoverEvent.version.desc()).limit(limit)
    if scope is not None and scope_id is not None:
        stmt = stmt.where(CutoverEvent.scope == scope.value, CutoverEvent.scope_id == scope_id)
    async with sessions() as session:
        return list((await session.execute(stmt)).scalars())


@dataclass(frozen=True)
class StageRow:
    """One migration's stage for `/metrics`: labelled by the backend's slug or the content's path (catalog-bounded)."""

    scope: str
    target: str
    old_engine: str
    new_engine: str
    stage: Stage


STAGES = (
    select(
        CutoverMigration.scope,
        func.coalesce(ExecutionBackend.slug, CourseContent.path, CutoverMigration.scope_id),
        CutoverMigration.old_engine,
        CutoverMigration.new_engine,
        CutoverMigration.stage,
    )
    .outerjoin(
        ExecutionBackend,
        (CutoverMigration.scope == Scope.BACKEND.value) & (ExecutionBackend.id == CutoverMigration.scope_id),
    )
    .outerjoin(
        CourseContent, (CutoverMigration.scope == Scope.CONTENT.value) & (CourseContent.id == CutoverMigration.scope_id)
    )
)


async def stage_rows(session: AsyncSession) -> list[StageRow]:
    """Every migration's stage in one query (one row per backend or content override: a handful)."""
    rows = (await session.execute(STAGES)).all()
    return [StageRow(scope, target, old, new, Stage(stage)) for scope, target, old, new, stage in rows]


async def all_migrations(sessions: async_sessionmaker[AsyncSession]) -> list[CutoverMigration]:
    async with sessions() as session:
        stmt = select(CutoverMigration).order_by(CutoverMigration.scope, CutoverMigration.scope_id)
        return list((await session.execute(stmt)).scalars())
