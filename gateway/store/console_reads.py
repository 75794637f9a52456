"""The console's reads: a migration's legs by stage and engine, its jobs in flight and its students, one
comparison with both legs, and the filtered jobs list. Queries only; `gateway.jobs.console` shapes them.

Legs carry the routing decision that admitted them (`leg.routing`: stage, percentage, config version), so the
traffic of each stage is read from the legs themselves, not guessed from the stage's time window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.cutover.stages import CutoverConfig, Scope
from gateway.store.models import Comparison, CourseContent, Leg, Result

# The roles of a job's own legs (the leg machine's role values; the store sits below it).
PRIMARY, SHADOW = "primary", "shadow"
AA = "aa"  # gateway.engines.shadowing.ExperimentKind.AA
# The newest legs a migration page reads for its traffic and latency tables (the page is a summary, not an audit).
MAX_LEGS = 20_000


def _result_scope(config: CutoverConfig) -> Any:
    if config.scope == Scope.CONTENT:
        return Result.course_content_id == config.scope_id
    return Result.course_content_id.in_(
        select(CourseContent.id).where(CourseContent.execution_backend_id == config.scope_id)
    )


@dataclass(frozen=True)
class LegRow:
    """What the traffic and latency tables need of one leg."""

    role: str
    engine: str
    stage: str | None
    member: str | None
    outcome: str | None
    finished: bool
    queue_seconds: float | None
    run_seconds: float | None


def _seconds(start: Any, end: Any) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


async def scope_legs(session: AsyncSession, config: CutoverConfig) -> list[LegRow]:
    """The scope's newest primary and shadow legs (up to `MAX_LEGS`), each with the stage that routed it."""
    stmt = (
        select(
            Leg.role,
            Leg.engine,
            Leg.routing,
            Result.course_member_id,
            Leg.outcome,
            Leg.finished,
            Leg.created_at,
            Leg.dispatched_at,
            Leg.started_at,
            Leg.finished_at,
        )
        .join(Result, Result.id == Leg.result_id)
        .where(_result_scope(config), Leg.role.in_((PRIMARY, SHADOW)))
        .order_by(Leg.created_at.desc())
        .limit(MAX_LEGS)
    )
    rows = []
    for role, engine, routing, member, outcome, finished, created, dispatched, started, ended in await session.execute(
        stmt
    ):
        stage = (routing or {}).get("stage") if isinstance(routing, dict) else None
        rows.append(
            LegRow(
                role, engine, stage, member, outcome, bool(finished),
                _seconds(dispatched or created, started), _seconds(started, ended),
            )
        )  # fmt: skip
    return rows


async def scope_members(session: AsyncSession, config: CutoverConfig) -> list[tuple[str, str]]:
    """Every (content, student) pair that has submitted in this scope: whom a change of stage moves."""
    stmt = (
        select(Result.course_content_id, Result.course_member_id)
        .where(_result_scope(config), Result.course_member_id.is_not(None))
        .distinct()
    )
    return [(c, m) for c, m in (await session.execute(stmt)).all() if c and m]


async def in_flight(session: AsyncSession, config: CutoverConfig) -> dict[str, int]:
    """Unfinished primary and shadow legs of this scope per engine: jobs a change does not move (they are pinned)."""
    stmt = (
        select(Leg.engine, func.count())
        .join(Result, Result.id == Leg.result_id)
        .where(_result_scope(config), Leg.finished.is_(False), Leg.role.in_((PRIMARY, SHADOW)))
        .group_by(Leg.engine)
    )
    return {engine: int(n) for engine, n in (await session.execute(stmt)).all()}


async def comparison_with_legs(
    session: AsyncSession, comparison_id: str
) -> tuple[Comparison, Result | None, list[Leg]] | None:
    """One comparison, its job's row and the two legs it compared."""
    found = await session.get(Comparison, comparison_id)
    if found is None:
        return None
    result = await session.get(Result, found.result_id)
    legs = list(
        (await session.execute(select(Leg).where(Leg.id.in_((found.primary_leg_id, found.shadow_leg_id))))).scalars()
    )
    return found, result, legs


async def comparisons_of_cluster(
    session: AsyncSession, where: Sequence[Any], signature: str | None, limit: int = 50
) -> list[tuple[Comparison, Result | None]]:
    """The newest comparisons of one cluster (its signature within a gate window), with their jobs."""
    stmt = (
        select(Comparison, Result)
        .outerjoin(Result, Result.id == Comparison.result_id)
        .where(*where, Comparison.signature == signature if signature else Comparison.signature.is_(None))
        .order_by(Comparison.created_at.desc())
        .limit(limit)
    )
    return [(c, r) for c, r in (await session.execute(stmt)).all()]


@dataclass(frozen=True)
class JobFilter:
    """The jobs list's filters; None is "any". `outcome` is a leg outcome or a comparison outcome."""

    outcome: str | None = None
    student: str | None = None
    commit: str | None = None
    engine: str | None = None


def _jobs_query(config: CutoverConfig | None, f: JobFilter) -> Select[Any]:
    primary = (
        select(Leg.result_id, Leg.engine, Leg.outcome, Leg.phase, Leg.started_at, Leg.finished_at)
        .where(Leg.role == PRIMARY)
        .subquery()
    )
    stmt = (
        select(Result, primary.c.engine, primary.c.outcome, primary.c.phase, Comparison.id, Comparison.outcome)
        .outerjoin(primary, primary.c.result_id == Result.id)
        # The job's live comparison (an A/A pair is the noise baseline, shown on its cluster, not as the job's).
        .outerjoin(Comparison, (Comparison.result_id == Result.id) & (Comparison.kind != AA))
    )
    if config is not None:
        stmt = stmt.where(_result_scope(config))
    if f.student:
        stmt = stmt.where(Result.course_member_id == f.student)
    if f.commit:
        stmt = stmt.where(Result.version_identifier.startswith(f.commit, autoescape=True))
    if f.engine:
        stmt = stmt.where(
            or_(
                primary.c.engine == f.engine,
                Comparison.shadow_engine == f.engine,
            )
        )
    if f.outcome:
        stmt = stmt.where(or_(primary.c.outcome == f.outcome, Comparison.outcome == f.outcome))
    return stmt


async def jobs(
    session: AsyncSession, config: CutoverConfig | None, f: JobFilter, limit: int = 200
) -> list[tuple[Any, ...]]:
    """The newest jobs matching `f`: (result, primary engine, primary outcome, phase, comparison id, its outcome)."""
    stmt = _jobs_query(config, f).order_by(Result.created_at.desc()).limit(limit)
    return [tuple(row) for row in (await session.execute(stmt)).all()]
