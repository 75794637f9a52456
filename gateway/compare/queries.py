"""Reading comparisons: one job's, a filtered page of them, and the summary per backend or course content.

Shared by the admin API (`/api/comparisons...`) and the CLI (`gateway compare ...`), so both say the same.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.compare.environment import describe
from gateway.compare.outcomes import ComparisonOutcome
from gateway.engines.shadowing import ExperimentKind
from gateway.store import lookup
from gateway.store.models import Comparison, ExecutionBackend, ShadowSkip

# Outcomes of the two engines agreeing or not (the denominator of a mismatch rate).
COMPARED = (ComparisonOutcome.MATCH, ComparisonOutcome.MISMATCH, ComparisonOutcome.NOISE)


class GroupBy(StrEnum):
    BACKEND = "backend"
    CONTENT = "content"


@dataclass(frozen=True)
class ComparisonFilter:
    execution_backend: str | None = None  # slug or id
    course_content_id: str | None = None
    outcome: ComparisonOutcome | None = None
    kind: ExperimentKind | None = None
    since: datetime | None = None


def comparison_json(c: Comparison) -> dict[str, Any]:
    return {
        "id": c.id,
        "result_id": c.result_id,
        "kind": c.kind,
        "outcome": c.outcome,
        "side": c.side,
        "reason": c.reason,
        "execution_backend_id": c.execution_backend_id,
        "course_content_id": c.course_content_id,
        "primary": {
            "leg_id": c.primary_leg_id,
            "engine": c.primary_engine,
            "score": c.primary_score,
            "queue_seconds": c.primary_queue_seconds,
            "run_seconds": c.primary_run_seconds,
        },
        "shadow": {
            "leg_id": c.shadow_leg_id,
            "engine": c.shadow_engine,
            "score": c.shadow_score,
            "queue_seconds": c.shadow_queue_seconds,
            "run_seconds": c.shadow_run_seconds,
        },
        "difference_count": c.difference_count,
        "differences": c.differences or [],
        "environment": _environment_json(c),
        # A mismatch's re-judgement: running, or done with its verdict (reproduced / noise / incomplete).
        "rejudge": c.rejudge,
        "created_at": c.created_at.isoformat() if c.created_at else None,
    }


def _environment_json(c: Comparison) -> dict[str, Any] | None:
    """Both legs' environments, where they differ, and the differences in words ("celery: time limit 4 s, ...")."""
    if not c.environment:
        return None
    found = c.environment.get("differences", [])
    return {
        "primary": c.environment.get("primary", {}),
        "shadow": c.environment.get("shadow", {}),
        "differences": found,
        "text": describe(found, c.primary_engine, c.shadow_engine) or "same",
    }


_PREFERENCE = {ExperimentKind.SHADOW.value: 0, ExperimentKind.REPLAY.value: 1, ExperimentKind.AA.value: 2}


async def for_result(sessions: async_sessionmaker[AsyncSession], result_id: str) -> dict[str, Any] | None:
    """The job's comparison (the engine-to-engine one first), with any others (A/A, replays) beside it."""
    async with sessions() as session:
        found = (await session.execute(select(Comparison).where(Comparison.result_id == result_id))).scalars().all()
    if not found:
        return None
    ordered = sorted(found, key=lambda c: (_PREFERENCE.get(c.kind, 3), c.created_at))
    return {**comparison_json(ordered[0]), "other_comparisons": [comparison_json(c) for c in ordered[1:]]}


async def _backend_id(session: AsyncSession, backend: str) -> str:
    return await lookup.backend_id(session, backend) or backend


async def _conditions(session: AsyncSession, f: ComparisonFilter) -> list[Any]:
    conditions: list[Any] = []
    if f.execution_backend:
        conditions.append(Comparison.execution_backend_id == await _backend_id(session, f.execution_backend))
    if f.course_content_id:
        conditions.append(Comparison.course_content_id == f.course_content_id)
    if f.outcome:
        conditions.append(Comparison.outcome == f.outcome.value)
    if f.kind:
        conditions.append(Comparison.kind == f.kind.value)
    if f.since:
        conditions.append(Comparison.created_at >= f.since)
    return conditions


async def page(
    sessions: async_sessionmaker[AsyncSession], f: ComparisonFilter, skip: int = 0, limit: int = 100
) -> tuple[int, list[dict[str, Any]]]:
    """(total matching, one page newest first)."""
    async with sessions() as session:
        conditions = await _conditions(session, f)
        total = await session.scalar(select(func.count(Comparison.id)).where(*conditions))
        stmt = (
            select(Comparison)
            .where(*conditions)
            .order_by(Comparison.created_at.desc(), Comparison.id)
            .offset(max(0, skip))
            .limit(max(1, limit))
        )
        rows = (await session.execute(stmt)).scalars().all()
    return int(total or 0), [comparison_json(c) for c in rows]


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0..1); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


async def summary(
    sessions: async_sessionmaker[AsyncSession], group_by: GroupBy, f: ComparisonFilter
) -> list[dict[str, Any]]:
    """Per backend or course content: outcomes, mismatch rates (raw and after noise), run times, skips."""
    key_column = Comparison.execution_backend_id if group_by == GroupBy.BACKEND else Comparison.course_content_id
    async with sessions() as session:
        conditions = await _conditions(session, f)
        stmt = select(
            key_column,
            Comparison.kind,
            Comparison.outcome,
            Comparison.primary_engine,
            Comparison.primary_run_seconds,
            Comparison.shadow_engine,
            Comparison.shadow_run_seconds,
        ).where(*conditions)
        rows = (await session.execute(stmt)).all()
        skip_key = ShadowSkip.execution_backend_id if group_by == GroupBy.BACKEND else ShadowSkip.course_content_id
        skip_conditions = []
        if f.execution_backend:
            skip_conditions.append(ShadowSkip.execution_backend_id == await _backend_id(session, f.execution_backend))
        if f.course_content_id:
            skip_conditions.append(ShadowSkip.course_content_id == f.course_content_id)
        skips = (
            await session.execute(
                select(skip_key, ShadowSkip.reason, func.sum(ShadowSkip.count))
                .where(*skip_conditions)
                .group_by(skip_key, ShadowSkip.reason)
            )
        ).all()
        slugs = {i: s for i, s in (await session.execute(select(ExecutionBackend.id, ExecutionBackend.slug))).all()}
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    aa: dict[str, Counter[str]] = defaultdict(Counter)
    times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, kind, outcome, p_engine, p_run, s_engine, s_run in rows:
        key = key or ""
        (aa if kind == ExperimentKind.AA else outcomes)[key][outcome] += 1
        if p_run is not None:
            times[key][p_engine].append(p_run)
        if s_run is not None and kind != ExperimentKind.AA:
            times[key][s_engine].append(s_run)
    skipped: dict[str, Counter[str]] = defaultdict(Counter)
    for key, reason, count in skips:
        skipped[key or ""][reason] += int(count or 0)
    groups = []
    for key in sorted(set(outcomes) | set(aa) | set(skipped)):
        counts = outcomes[key]
        compared = sum(counts[o] for o in COMPARED)
        mismatched = counts[ComparisonOutcome.MISMATCH] + counts[ComparisonOutcome.NOISE]
        groups.append(
            {
                group_by.value: key,
                "backend_slug": slugs.get(key) if group_by == GroupBy.BACKEND else None,
                "comparisons": sum(counts.values()),
                "outcomes": {o.value: counts[o] for o in ComparisonOutcome},
                "mismatch_rate": _rate(mismatched, compared),
                "mismatch_rate_noise_adjusted": _rate(counts[ComparisonOutcome.MISMATCH], compared),
                "aa": {"comparisons": sum(aa[key].values()), "flips": aa[key][ComparisonOutcome.MISMATCH]},
                "run_seconds": {
                    engine: {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99), "n": len(values)}
                    for engine, values in sorted(times[key].items())
                },
                "skipped": dict(sorted(skipped[key].items())),
            }
        )
    return groups
