"""The cutover service behind the admin API and the CLI: change a migration (or preview the change), list them.

Every change is planned by the pure stage machine (`gateway.cutover.stage_machine`), previewed for a list of members
or a sample ("where would their next job go, before and after"), and saved with its event unless it is a dry
run. Errors are `JobError`s: 404 for an unknown scope, 422 for a change the machine refuses, 409 for a stale one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backends.registry import UnknownEngineError, canonical_engine
from gateway.cutover.decide import decide
from gateway.cutover.stage_machine import Action, Change, InvalidChange, plan_change
from gateway.cutover.stages import CutoverConfig, Scope, Stage
from gateway.jobs import cutover_gates as gates
from gateway.jobs.errors import Conflict, JobError, NotFound
from gateway.store import cutover_configs as store
from gateway.store.leg_reads import job_legs
from gateway.store.models import CourseContent, CourseMember, utcnow


class InvalidCutover(JobError):
    status_code = 422


@dataclass(frozen=True)
class Placement:
    """Where one member's next job goes, before and after a change."""

    course_content_id: str
    course_member_id: str
    bucket: int | None
    before: str
    after: str
    before_shadow: str | None
    after_shadow: str | None

    @property
    def moves(self) -> bool:
        return self.before != self.after

    def to_dict(self) -> dict[str, Any]:
        return {
            "course_content_id": self.course_content_id,
            "course_member_id": self.course_member_id,
            "bucket": self.bucket,
            "before": self.before,
            "after": self.after,
            "before_shadow": self.before_shadow,
            "after_shadow": self.after_shadow,
            "moves": self.moves,
        }


@dataclass
class ChangeResult:
    change: Change
    applied: bool
    dry_run: bool
    event_id: str | None = None
    preview: list[Placement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        moved = sum(p.moves for p in self.preview)
        return {
            "action": self.change.action.value,
            "dry_run": self.dry_run,
            "applied": self.applied,
            "noop": self.change.is_noop,
            "event_id": self.event_id,
            "before": self.change.before.to_dict() if self.change.before.version else None,
            "after": self.change.after.to_dict(),
            "changed": {k: {"from": a, "to": b} for k, (a, b) in self.change.changed.items()},
            "reason": self.change.reason,
            "preview": [p.to_dict() for p in self.preview],
            "preview_summary": {"members": len(self.preview), "moving": moved},
        }


def _engine(name: str) -> str:
    try:
        return canonical_engine(name)
    except UnknownEngineError:
        raise InvalidCutover(f"unknown engine: {name}") from None


async def _ref(session: AsyncSession, scope: Scope, key: str) -> store.ScopeRef:
    try:
        return await store.resolve_scope(session, scope, key)
    except store.UnknownScope as exc:
        raise NotFound(str(exc)) from None


async def current(
    sessions: async_sessionmaker[AsyncSession], scope: Scope, key: str
) -> tuple[store.ScopeRef, CutoverConfig | None]:
    async with sessions() as session:
        ref = await _ref(session, scope, key)
        row = await store.load(session, scope, ref.scope_id)
    return ref, store.to_config(row) if row else None


async def _preview_pairs(
    sessions: async_sessionmaker[AsyncSession], ref: store.ScopeRef, members: list[str], sample: int
) -> list[tuple[str, str]]:
    async with sessions() as session:
        if ref.scope == Scope.CONTENT:
            contents = [ref.scope_id]
        else:
            stmt = select(CourseContent.id).where(CourseContent.execution_backend_id == ref.scope_id)
            contents = list((await session.execute(stmt.order_by(CourseContent.id).limit(20))).scalars())
        chosen = list(members)
        if sample > 0:
            stmt = select(CourseMember.id).order_by(CourseMember.id).limit(sample)
            chosen += [m for m in (await session.execute(stmt)).scalars() if m not in chosen]
    return [(c, m) for c in contents for m in chosen]


def placements(
    before: CutoverConfig | None, after: CutoverConfig, legacy: str, pairs: list[tuple[str, str]]
) -> list[Placement]:
    out = []
    for content, member in pairs:
        old, new = decide(before, legacy, content, member), decide(after, legacy, content, member)
        out.append(
            Placement(content, member, new.record.get("bucket"), old.primary, new.primary, old.shadow, new.shadow)
        )
    return out


async def change_migration(
    sessions: async_sessionmaker[AsyncSession],
    scope: Scope,
    key: str,
    action: Action,
    actor: str,
    *,
    reason: str = "",
    dry_run: bool = False,
    stage: Stage | None = None,
    percentage: float | None = None,
    old_engine: str | None = None,
    new_engine: str | None = None,
    expected_version: int | None = None,
    members: list[str] | None = None,
    sample: int = 0,
    now: datetime | None = None,
    **settings: Any,
) -> ChangeResult:
    """Plan a change, preview it, and (unless a dry run) save it with its event.

    A scope without a migration gets one on its first change: its old engine defaults to the engine its
    backend's legacy `type` names, and `new_engine` is required.
    """
    now = now or utcnow()
    ref, config = await current(sessions, scope, key)
    legacy = ref.legacy_engine or ""
    if config is None:
        if not new_engine:
            raise InvalidCutover("a new migration needs new_engine")
        old = _engine(old_engine) if old_engine else legacy
        if not old:
            raise InvalidCutover("the backend's type names no engine: give old_engine")
        base = CutoverConfig(scope, ref.scope_id, old, _engine(new_engine), salt=ref.scope_id)
    else:
        if (old_engine and _engine(old_engine) != config.old_engine) or (
            new_engine and _engine(new_engine) != config.new_engine
        ):
            raise InvalidCutover("a migration's engines are fixed: roll it back to old_only and delete it first")
        if expected_version is not None and expected_version != config.version:
            raise Conflict(f"the migration is at version {config.version}, not {expected_version}")
        base = config
    try:
        change = plan_change(base, action, now, reason=reason, stage=stage, percentage=percentage, **settings)
    except InvalidChange as exc:
        raise InvalidCutover(str(exc)) from None
    pairs = await _preview_pairs(sessions, ref, members or [], sample) if (members or sample) else []
    result = ChangeResult(
        change, applied=False, dry_run=dry_run, preview=placements(config, change.after, legacy, pairs)
    )
    if dry_run or change.is_noop:
        return result
    try:
        event = await store.save_change(sessions, change, actor, now=now)
    except store.StaleChange as exc:
        raise Conflict(str(exc)) from None
    result.applied = event is not None
    result.event_id = event.id if event else None
    return result


def event_dict(event: Any) -> dict[str, Any]:
    return {
        "id": event.id,
        "scope": event.scope,
        "scope_id": event.scope_id,
        "version": event.version,
        "action": event.action,
        "actor": event.actor,
        "at": event.at.isoformat(),
        "from_stage": event.from_stage,
        "to_stage": event.to_stage,
        "from_percentage": (event.from_config or {}).get("percentage"),
        "to_percentage": event.to_config.get("percentage"),
        "reason": event.reason,
        "evaluation": event.evaluation,
        "cluster": event.cluster,
    }


def migration_dict(row: Any) -> dict[str, Any]:
    data = store.to_config(row).to_dict()
    data["id"] = row.id
    data["updated_by"] = row.updated_by
    data["last_evaluation"] = row.last_evaluation
    data["last_evaluated_at"] = row.last_evaluated_at.isoformat() if row.last_evaluated_at else None
    return data


async def list_migrations(sessions: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
    return [migration_dict(row) for row in await store.all_migrations(sessions)]


async def migration(sessions: async_sessionmaker[AsyncSession], scope: Scope, key: str) -> dict[str, Any]:
    """One migration by its scope and key (an id, a slug or a path); 404 when none is set there."""
    async with sessions() as session:
        ref = await _ref(session, scope, key)
        row = await store.load(session, scope, ref.scope_id)
    if row is None:
        raise NotFound(f"no migration for {scope.value} {key}")
    return migration_dict(row)


async def history(
    sessions: async_sessionmaker[AsyncSession], scope: Scope | None, key: str | None, limit: int
) -> list[dict[str, Any]]:
    """The newest changes first: every migration's, or one scope's (`scope` and `key` given)."""
    limit = max(1, min(limit, 1000))
    if scope is None or key is None:
        return [event_dict(e) for e in await store.history(sessions, limit=limit)]
    ref, _config = await current(sessions, scope, key)
    return [event_dict(e) for e in await store.history(sessions, scope, ref.scope_id, limit=limit)]


async def result_routing(sessions: async_sessionmaker[AsyncSession], result_id: str) -> dict[str, Any]:
    """Every leg of a job with its engine and the routing decision recorded when it was admitted."""
    found = await job_legs(sessions, result_id)
    if found is None:
        raise NotFound("Result not found")
    row, legs = found
    return {
        "result_id": result_id,
        "test_system_id": row.test_system_id,
        "legs": [
            {"id": leg.id, "role": leg.role, "engine": leg.engine, "phase": leg.phase, "routing": leg.routing}
            for leg in legs
        ],
    }


async def evaluate_scope(
    sessions: async_sessionmaker[AsyncSession],
    scope: Scope,
    key: str,
    dry_run: bool,
    liveness: gates.Liveness | None = None,
) -> dict[str, Any]:
    """Evaluate one migration's gate now and take the policy's step (unless `dry_run`); 404 when none is set.
    `liveness`: whether an engine reports a live worker (the API's health monitor), for a dead engine's legs."""
    _ref, config = await current(sessions, scope, key)
    if config is None:
        raise NotFound(f"no migration for {scope.value} {key}")
    return (await gates.evaluate_one(sessions, config, dry_run=dry_run, liveness=liveness)).to_dict()
