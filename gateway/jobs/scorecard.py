"""The scorecard: per migration, where it stands and what its next gate still needs, from the comparisons.

One read model for the API (`GET /api/cutover/scorecard`), `gateway cutover status` and the `/scorecard` page:
stage and time in it, samples, raw and noise-adjusted parity, the judged mismatch rate and each engine's
infra-error rate with their confidence intervals (`gateway.cutover.confidence`), p50/p99 run time per engine,
the last recorded evaluation, a fresh evaluation's needs, an hourly series (parity, p50 run time) for the chart,
and the mismatch clusters (same signature: outcome, tests and differing paths) with a sample diff each, the open
ones (counting against the gate) apart from those an admin accepted.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.compare.outcomes import ComparisonOutcome
from gateway.compare.queries import ComparisonFilter, GroupBy, summary
from gateway.cutover.confidence import RateInterval
from gateway.cutover.gates import evaluate, next_step, still_needs
from gateway.cutover.stages import CutoverConfig, Scope
from gateway.cutover.triage import Acceptance, ClusterStatus, active_signatures, cluster_key, status_of
from gateway.jobs.cutover_gates import (
    comparison_rows,
    evidence_of,
    evidence_window,
    latest_environment,
    parity_evidence,
    percentile,
    unstarted_legs,
)
from gateway.store import cutover_configs as store
from gateway.store.cutover_holds import current_hold
from gateway.store.models import Comparison, CourseContent, CutoverMigration, ExecutionBackend, utcnow

SERIES_WINDOW = timedelta(hours=48)
MAX_PATHS = 5


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _series(config: CutoverConfig, rows: Any, accepted: frozenset[str]) -> list[dict[str, Any]]:
    """Hourly points over the last 48 hours: parity (noise-adjusted, accepted clusters left out, as the gate
    judges now) and the p50 run time of each engine."""
    hours: dict[str, list[Any]] = {}
    for row in rows:
        at: datetime = row[6]
        hours.setdefault(at.strftime("%Y-%m-%dT%H:00"), []).append(row)
    points = []
    for hour in sorted(hours)[-48:]:
        evidence, sides = evidence_of(config, hours[hour], accepted)
        rate = evidence.mismatch_rate
        points.append(
            {
                "hour": hour,
                "samples": evidence.comparable,
                "parity": None if rate is None else 1 - rate,
                "p50_seconds": {e: percentile(s.run_seconds, 0.5) for e, s in sides.items()},
            }
        )
    return points


async def _clusters(
    session: AsyncSession, config: CutoverConfig, acceptances: dict[str, Acceptance], now: datetime
) -> list[dict[str, Any]]:
    """The window's mismatch clusters, largest first, each with its acceptance (if any) and a sample diff."""
    # The gate's window, so a cluster's count is what the gate counts (an A/A mismatch is not evidence).
    where = [*evidence_window(config, config.stage_since), Comparison.outcome == ComparisonOutcome.MISMATCH.value]
    grouped = (
        await session.execute(
            select(Comparison.signature, func.count(), func.max(Comparison.created_at))
            .where(*where)
            .group_by(Comparison.signature)
            .order_by(func.count().desc(), Comparison.signature)
        )
    ).all()
    clusters = []
    for signature, count, last_seen in grouped:
        status = status_of(signature, acceptances, now) if signature else ClusterStatus.OPEN
        if status != ClusterStatus.ACCEPTED and sum(c["status"] != ClusterStatus.ACCEPTED for c in clusters) >= 10:
            continue  # the ten largest open clusters are shown; every accepted one is
        sample = (
            await session.execute(
                select(Comparison.id, Comparison.result_id, Comparison.differences)
                .where(*where, Comparison.signature == signature if signature else Comparison.signature.is_(None))
                .order_by(Comparison.created_at.desc())
                .limit(1)
            )
        ).one()
        differences = sample.differences or []
        key = cluster_key(differences)
        acceptance = acceptances.get(signature) if signature else None
        clusters.append(
            {
                "signature": signature,
                "status": status.value,
                "count": count,
                "last_seen": last_seen.isoformat() if last_seen else None,
                "tests": sorted({test for test, _path in key if test}),
                "paths": [path for _test, path in key][:MAX_PATHS],
                "acceptance": acceptance.to_dict(now) if acceptance else None,
                "sample": {"comparison_id": sample.id, "result_id": sample.result_id, "differences": differences[:3]},
            }
        )
    return clusters


async def _labels(session: AsyncSession) -> dict[str, str]:
    backends = (await session.execute(select(ExecutionBackend.id, ExecutionBackend.slug))).all()
    contents = (await session.execute(select(CourseContent.id, CourseContent.path))).all()
    return {**{i: s for i, s in backends}, **{i: p for i, p in contents}}


async def card(sessions: async_sessionmaker[AsyncSession], row: CutoverMigration, now: datetime) -> dict[str, Any]:
    config = store.to_config(row)
    async with sessions() as session:
        rows = await comparison_rows(session, config, config.stage_since, routed=True)
        # The chart looks further back than the current stage: how parity and run time moved across stages.
        history = await comparison_rows(session, config, now - SERIES_WINDOW)
        acceptances = await store.acceptances(session, config.scope, config.scope_id)
        clusters = await _clusters(session, config, acceptances, now)
        hold = await current_hold(session, config.scope, config.scope_id)
        parity_breaks, parity_example = await parity_evidence(
            session, config, evidence_window(config, config.stage_since)
        )
        environments = await latest_environment(session, config)
        unstarted = await unstarted_legs(session, config, now)
    accepted = active_signatures(acceptances.values(), now)
    evidence, sides = evidence_of(config, rows, accepted)
    evidence = replace(evidence, parity_breaks=parity_breaks, parity_example=parity_example)
    evaluation = evaluate(evidence, config.thresholds)
    since = config.stage_since
    return {
        **config.to_dict(),
        "id": row.id,
        "seconds_in_stage": (now - since).total_seconds() if since else None,
        "samples": evidence.comparable,
        "comparisons": len(rows),
        "parity_raw": None if evidence.raw_mismatch_rate is None else 1 - evidence.raw_mismatch_rate,
        "parity": None if evidence.mismatch_rate is None else 1 - evidence.mismatch_rate,
        # The judged (noise-adjusted, accepted clusters excluded) mismatch rate with its interval, as the gate saw it.
        "confidence": config.thresholds.confidence,
        "mismatch": evaluation.mismatch.to_dict() if evaluation.mismatch else None,
        "mismatches": evidence.mismatches,
        "noise_mismatches": evidence.noise_mismatches,
        "accepted_mismatches": evidence.accepted_mismatches,
        "engines": {
            engine: {
                "role": "new" if engine == config.new_engine else "old",
                "legs": side.legs,
                "infra_errors": side.infra_errors,
                "infra_error_rate": _rate(side.infra_errors, side.legs),
                "infra_error": RateInterval(side.infra_errors, side.legs, config.thresholds.confidence).to_dict(),
                "p50_seconds": percentile(side.run_seconds, 0.5),
                "p99_seconds": percentile(side.run_seconds, 0.99),
            }
            for engine, side in sides.items()
        },
        "evaluation": evaluation.to_dict(),
        "next": {"step": (nxt := next_step(config, evaluation, now, hold)).step.value, "why": nxt.why},
        # Both engines' effective environments (the latest comparison that carried them) and where they differ.
        "environment": environments,
        # New-engine legs sent and not started within the start timeout (the gate asks the engine's liveness).
        "new_unstarted": unstarted,
        # An operator's rollback (or pause) holds automatic promotion until resumed.
        "paused": hold is not None,
        "hold": hold.to_dict() if hold else None,
        "needs": still_needs(config, evaluation, now),
        "last_evaluation": row.last_evaluation,
        "last_evaluated_at": row.last_evaluated_at.isoformat() if row.last_evaluated_at else None,
        "series": _series(config, history, accepted),
        # Open (never accepted, or the acceptance expired: they count) apart from the accepted ones (they do not).
        "clusters": [c for c in clusters if c["status"] != ClusterStatus.ACCEPTED],
        "accepted_clusters": [c for c in clusters if c["status"] == ClusterStatus.ACCEPTED],
    }


async def scorecard(sessions: async_sessionmaker[AsyncSession], now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or utcnow()
    cards = []
    async with sessions() as session:
        labels = await _labels(session)
    for row in await store.all_migrations(sessions):
        found = await card(sessions, row, now)
        found["label"] = labels.get(row.scope_id, row.scope_id)
        cards.append(found)
    return cards


def gate_numbers(found: dict[str, Any]) -> dict[str, Any]:
    """The gate's parity of a migration as every view shows it (console, `cutover status`, `compare summary`)."""
    return {
        "stage": found["stage"],
        "stage_since": found["stage_since"],
        "samples": found["samples"],
        "mismatches": found["mismatches"],
        "noise_mismatches": found["noise_mismatches"],
        "accepted_mismatches": found["accepted_mismatches"],
        "parity": found["parity"],
        "parity_raw": found["parity_raw"],
        "verdict": found["evaluation"]["verdict"],
    }


async def comparison_summary(
    sessions: async_sessionmaker[AsyncSession], group_by: GroupBy, f: ComparisonFilter, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The comparison summary per backend or content (all its comparisons, every kind and time) with, for a group
    that is a migration's scope, that migration's gate parity (`gate`) from the same card the scorecard shows:
    one number for one scope, whichever view asks."""
    now = now or utcnow()
    groups = await summary(sessions, group_by, f)
    scope = Scope.BACKEND if group_by == GroupBy.BACKEND else Scope.CONTENT
    rows = {row.scope_id: row for row in await store.all_migrations(sessions) if row.scope == scope.value}
    async with sessions() as session:
        labels = await _labels(session)
    for group in groups:
        key = group[group_by.value] or ""
        group["label"] = labels.get(key, key)
        row = rows.get(key)
        group["gate"] = gate_numbers(await card(sessions, row, now)) if row is not None else None
    return groups
