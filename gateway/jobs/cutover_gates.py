"""Gates over comparisons: gather one migration's evidence, evaluate it, and take the step the policy says.

Evidence is the comparisons of the jobs the current stage routed: a live shadow comparison counts only when its
job's primary leg was routed (its `leg.routing` record) by this migration at its current stage, canary step and
config version - so canary 25 % is judged on the jobs canary 25 % routed, not on those routed in shadow before
it; replays (finished jobs run again on the new engine) count while the migration is in `old_only` or `shadow`,
since it entered that stage (A/A runs are the noise baseline, not evidence). Mismatches in clusters an admin
accepted (and whose acceptance has not expired) are counted apart (`gateway.cutover.triage`). An operator's
rollback holds automatic promotion until resumed (`gateway.cutover.hold`). The verdict
and the step are pure (`gateway.cutover.gates`); this module reads the comparison table and saves the outcome:
the last evaluation on the migration, and a demotion or promotion as an event with the evaluation attached
(actor `gate`).

An evaluation costs the same whatever the number of comparisons: the live ones are counted by `gate_tally`, kept
by triggers as comparisons are written and re-judged (`gateway.store.gate_tally`, migration 0016), and the p99s
read only the top 1 % of the stage's run times (`nth_largest_run`); `scanned_evidence` reads the rows instead
(the recount the tally is checked against).

It runs on demand (`gateway cutover evaluate`, the admin API) and periodically as a reconciler step; on
PostgreSQL an advisory lock makes one process at a time evaluate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, false, func, literal_column, not_, or_, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.compare.environment import describe as describe_environment
from gateway.compare.outcomes import NOT_EVIDENCE, ComparisonOutcome, Side
from gateway.cutover.gates import Evaluation, Evidence, Next, Step, evaluate, next_step, parity_required
from gateway.cutover.hold import GATE_ACTOR
from gateway.cutover.stage_machine import Action, InvalidChange, plan_change
from gateway.cutover.stages import CutoverConfig, Scope, Stage
from gateway.cutover.triage import active_signatures
from gateway.legs.states import DispatchState
from gateway.store import cutover_configs as store
from gateway.store.cutover_holds import current_hold
from gateway.store.gate_tally import TallyRow, tally
from gateway.store.models import Comparison, CutoverMigration, Leg, Result, utcnow

log = logging.getLogger(__name__)
# Any fixed 64-bit key: the advisory lock that makes one process at a time run the periodic evaluation.
ADVISORY_KEY = 0x6375_746F_7665_7231
EVIDENCE_KINDS = ("shadow", "replay")
# Stages in which a replay (the new engine re-running finished jobs) is evidence: before it answers anyone.
REPLAY_STAGES = (Stage.OLD_ONLY, Stage.SHADOW)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest rank (no interpolation: a value that was observed)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class EngineSide:
    legs: int
    infra_errors: int
    run_seconds: tuple[float, ...]


def scope_filter(config: CutoverConfig) -> Any:
    if config.scope == Scope.CONTENT:
        return Comparison.course_content_id == config.scope_id
    return Comparison.execution_backend_id == config.scope_id


def routed_by(config: CutoverConfig) -> Any:
    """The comparison's job was routed by this migration at its current stage, canary step and config version
    (the record `gateway.cutover.decide` wrote on the primary leg; a canary step or any setting bumps the
    version), or it is a replay made in a stage where replays are evidence."""
    # Copied from the primary leg's routing record when the comparison is written (plain columns: no JSON read).
    live = and_(
        Comparison.kind == "shadow",
        Comparison.routed_scope == config.scope.value,
        Comparison.routed_stage == config.stage.value,
        Comparison.routed_version == config.version,
    )
    replay = Comparison.kind == "replay" if config.stage in REPLAY_STAGES else false()
    return or_(live, replay)


async def comparison_rows(
    session: AsyncSession, config: CutoverConfig, since: datetime | None, routed: bool = False
) -> Sequence[Any]:
    """The rows behind the scorecard: `routed` for the gate's evidence (this stage's traffic), else every
    comparison between the two engines since `since` (the chart's history across stages)."""
    stmt = select(
        Comparison.outcome,
        Comparison.side,
        Comparison.primary_engine,
        Comparison.shadow_engine,
        Comparison.primary_run_seconds,
        Comparison.shadow_run_seconds,
        Comparison.created_at,
        Comparison.signature,
    ).where(
        scope_filter(config),
        Comparison.kind.in_(EVIDENCE_KINDS),
        Comparison.primary_engine.in_((config.old_engine, config.new_engine)),
        Comparison.shadow_engine.in_((config.old_engine, config.new_engine)),
    )
    if since is not None:
        stmt = stmt.where(Comparison.created_at >= since)
    if routed:
        stmt = stmt.where(routed_by(config))
    return (await session.execute(stmt)).all()


def evidence_of(
    config: CutoverConfig, rows: Sequence[Any], accepted: frozenset[str] = frozenset()
) -> tuple[Evidence, dict[str, EngineSide]]:
    """Counts per outcome, and per engine its legs, infra errors and run times (what the gate and scorecard need).

    `accepted`: the signatures of the clusters accepted now; their mismatches are counted apart."""
    counts: dict[str, int] = {}
    accepted_mismatches = 0
    legs = {config.old_engine: 0, config.new_engine: 0}
    errors = {config.old_engine: 0, config.new_engine: 0}
    runs: dict[str, list[float]] = {config.old_engine: [], config.new_engine: []}
    for outcome, side, primary, shadow, primary_run, shadow_run, _at, signature in rows:
        if primary == shadow:
            continue
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == ComparisonOutcome.MISMATCH and signature in accepted:
            accepted_mismatches += 1
        if outcome in NOT_EVIDENCE:
            continue
        for engine, run, this_side in ((primary, primary_run, Side.PRIMARY), (shadow, shadow_run, Side.SHADOW)):
            legs[engine] += 1
            failed = outcome == ComparisonOutcome.INFRA_ERROR and side in (this_side, Side.BOTH)
            timed_out = outcome == ComparisonOutcome.SHADOW_TIMEOUT and this_side == Side.SHADOW
            if failed or timed_out:
                errors[engine] += 1
            elif run is not None:
                runs[engine].append(float(run))
    mismatch, noise = counts.get(ComparisonOutcome.MISMATCH, 0), counts.get(ComparisonOutcome.NOISE, 0)
    evidence = Evidence(
        comparable=counts.get(ComparisonOutcome.MATCH, 0) + mismatch + noise,
        mismatches=mismatch + noise,
        noise_mismatches=noise,
        accepted_mismatches=accepted_mismatches,
        new_legs=legs[config.new_engine],
        new_infra_errors=errors[config.new_engine],
        old_legs=legs[config.old_engine],
        old_infra_errors=errors[config.old_engine],
        old_p99_seconds=percentile(runs[config.old_engine], 0.99),
        new_p99_seconds=percentile(runs[config.new_engine], 0.99),
    )
    sides = {e: EngineSide(legs[e], errors[e], tuple(runs[e])) for e in legs}
    return evidence, sides


def evidence_window(config: CutoverConfig, since: datetime | None, routed: bool = True) -> list[Any]:
    """The gate's window: this scope's comparisons between the two engines, since `since`, of the jobs the current
    stage routed (`routed_by`; `routed` False: whatever routed them)."""
    engines = (config.old_engine, config.new_engine)
    where = [
        scope_filter(config),
        Comparison.kind.in_(EVIDENCE_KINDS),
        Comparison.primary_engine.in_(engines),
        Comparison.shadow_engine.in_(engines),
        Comparison.primary_engine != Comparison.shadow_engine,
    ]
    if routed:
        where.append(routed_by(config))
    if since is not None:
        where.append(Comparison.created_at >= since)
    return where


def _ran(this_side: Side) -> Any:
    """The leg on this side ran to an answer (its run time is evidence): no infra error or timeout of its own."""
    own_error = and_(
        Comparison.outcome == ComparisonOutcome.INFRA_ERROR.value,
        Comparison.side.in_((this_side.value, Side.BOTH.value)),
    )
    conditions = [
        Comparison.outcome.not_in([o.value for o in NOT_EVIDENCE]),
        or_(Comparison.side.is_(None), not_(own_error)),
    ]
    if this_side == Side.SHADOW:
        conditions.append(Comparison.outcome != ComparisonOutcome.SHADOW_TIMEOUT.value)
    return and_(*conditions)


def p99_statement(where: list[Any], old_engine: str, new_engine: str) -> Any:
    """Both engines' p99 run time in one statement (PostgreSQL): each leg's run that ended in an answer, a side's
    rows by `_ran`; `percentile_disc` is the nearest rank, the same value `percentile` picks. The window's
    columns all come from the covering index (migration 0014): an index-only scan, not a row fetch."""
    runs = _runs(where).subquery()
    p99 = func.percentile_disc(0.99).within_group(runs.c.s)
    return select(p99.filter(runs.c.engine == old_engine), p99.filter(runs.c.engine == new_engine))


def _runs(where: list[Any]) -> Any:
    """(engine, run seconds) of every leg in the window whose run is evidence: the primary's, then the shadow's."""
    return union_all(
        select(Comparison.primary_engine.label("engine"), Comparison.primary_run_seconds.label("s")).where(
            *where, Comparison.primary_run_seconds.is_not(None), _ran(Side.PRIMARY)
        ),
        select(Comparison.shadow_engine.label("engine"), Comparison.shadow_run_seconds.label("s")).where(
            *where, Comparison.shadow_run_seconds.is_not(None), _ran(Side.SHADOW)
        ),
    )


async def _p99s(session: AsyncSession, where: list[Any], old_engine: str, new_engine: str) -> tuple[Any, Any]:
    """(old engine's p99, new engine's p99) run seconds, None where an engine has no run."""
    if session.bind.dialect.name == "postgresql":
        found = (await session.execute(p99_statement(where, old_engine, new_engine))).one()
        return tuple(None if v is None else float(v) for v in found)  # type: ignore[return-value]
    runs = _runs(where).subquery()
    values: dict[str, list[float]] = {old_engine: [], new_engine: []}
    for engine, run in (await session.execute(select(runs.c.engine, runs.c.s))).all():
        values.setdefault(engine, []).append(float(run))
    return percentile(values[old_engine], 0.99), percentile(values[new_engine], 0.99)


def grouped_counts(where: list[Any]) -> Any:
    """The window's comparisons counted by outcome, side and primary engine (an index-only scan, migration 0014)."""
    return (
        select(Comparison.outcome, Comparison.side, Comparison.primary_engine, func.count())
        .where(*where)
        .group_by(Comparison.outcome, Comparison.side, Comparison.primary_engine)
    )


async def _accepted_count(session: AsyncSession, where: list[Any], accepted: frozenset[str]) -> int:
    if not accepted:
        return 0
    stmt = select(func.count()).where(
        *where, Comparison.outcome == ComparisonOutcome.MISMATCH.value, Comparison.signature.in_(sorted(accepted))
    )
    return int(await session.scalar(stmt) or 0)


def _tallied(config: CutoverConfig, grouped: Sequence[Any]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(count per outcome, legs per engine, infra errors per engine) from (outcome, side, primary engine, n)."""
    counts: dict[str, int] = {}
    legs = {config.old_engine: 0, config.new_engine: 0}
    errors = {config.old_engine: 0, config.new_engine: 0}
    other = {config.old_engine: config.new_engine, config.new_engine: config.old_engine}
    for outcome, side, primary, n in grouped:
        counts[outcome] = counts.get(outcome, 0) + n
        if outcome in NOT_EVIDENCE:
            continue
        shadow = other[primary]
        legs[primary] += n
        legs[shadow] += n
        if outcome == ComparisonOutcome.INFRA_ERROR:
            if side in (Side.PRIMARY, Side.BOTH):
                errors[primary] += n
            if side in (Side.SHADOW, Side.BOTH):
                errors[shadow] += n
        elif outcome == ComparisonOutcome.SHADOW_TIMEOUT:
            errors[shadow] += n
    return counts, legs, errors


def _evidence(
    config: CutoverConfig,
    grouped: Sequence[Any],
    accepted_mismatches: int,
    p99s: tuple[float | None, float | None],
    parity: tuple[int, str | None],
) -> Evidence:
    counts, legs, errors = _tallied(config, grouped)
    mismatch, noise = counts.get(ComparisonOutcome.MISMATCH, 0), counts.get(ComparisonOutcome.NOISE, 0)
    return Evidence(
        comparable=counts.get(ComparisonOutcome.MATCH, 0) + mismatch + noise,
        mismatches=mismatch + noise,
        noise_mismatches=noise,
        accepted_mismatches=accepted_mismatches,
        new_legs=legs[config.new_engine],
        new_infra_errors=errors[config.new_engine],
        old_legs=legs[config.old_engine],
        old_infra_errors=errors[config.old_engine],
        old_p99_seconds=p99s[0],
        new_p99_seconds=p99s[1],
        parity_breaks=parity[0],
        parity_example=parity[1],
    )


async def scanned_evidence(
    session: AsyncSession, config: CutoverConfig, since: datetime | None, accepted: frozenset[str] = frozenset()
) -> Evidence:
    """The gate's evidence aggregated over the window's comparison rows (counts grouped, p99 by `percentile_disc`
    on PostgreSQL): the recount `gate_evidence`'s tally must agree with (tests, `bench/bench_cutover_gate.py`);
    it reads every comparison of the stage."""
    where = evidence_window(config, since)
    grouped = (await session.execute(grouped_counts(where))).all()
    return _evidence(
        config,
        grouped,
        await _accepted_count(session, where, accepted),
        await _p99s(session, where, config.old_engine, config.new_engine),
        await parity_evidence(session, config, where),
    )


def live_window(config: CutoverConfig) -> list[Any]:
    """The live comparisons the current stage and config version routed, written as the partial run indexes'
    predicates are (literals, so that even a generic plan proves them: migration 0016)."""
    column = Comparison.course_content_id if config.scope == Scope.CONTENT else Comparison.execution_backend_id
    return [
        Comparison.kind == literal_column("'shadow'"),
        Comparison.routed_scope == literal_column(f"'{config.scope.value}'"),
        column == config.scope_id,
        Comparison.routed_stage == config.stage.value,
        Comparison.routed_version == config.version,
    ]


def replay_window(config: CutoverConfig, since: datetime | None) -> list[Any] | None:
    """The replays that are evidence (in `old_only` and `shadow`, since the stage began); None in other stages."""
    if config.stage not in REPLAY_STAGES:
        return None
    engines = (config.old_engine, config.new_engine)
    where = [
        scope_filter(config),
        Comparison.kind == "replay",
        Comparison.primary_engine.in_(engines),
        Comparison.shadow_engine.in_(engines),
        Comparison.primary_engine != Comparison.shadow_engine,
    ]
    if since is not None:
        where.append(Comparison.created_at >= since)
    return where


def ran(outcome: str, side: str | None, this_side: Side) -> bool:
    """`_ran` on one class: the leg on this side ran to an answer."""
    if outcome in NOT_EVIDENCE:
        return False
    if outcome == ComparisonOutcome.INFRA_ERROR and side in (this_side, Side.BOTH):
        return False
    return not (this_side == Side.SHADOW and outcome == ComparisonOutcome.SHADOW_TIMEOUT)


def nth_largest_run(config: CutoverConfig, engine: str, replay: list[Any] | None, m: int) -> Any:
    """The m-th largest run time of `engine` in the window: the top m of each source (the stage's live comparisons
    with the engine as primary, as shadow, by the partial run indexes; the replays), merged. Reads m index entries
    per source, not the window."""
    other = config.new_engine if engine == config.old_engine else config.old_engine
    live = live_window(config)
    parts = []
    for this_side, mine, theirs, seconds in (
        (Side.PRIMARY, Comparison.primary_engine, Comparison.shadow_engine, Comparison.primary_run_seconds),
        (Side.SHADOW, Comparison.shadow_engine, Comparison.primary_engine, Comparison.shadow_run_seconds),
    ):
        conditions = [mine == engine, seconds.is_not(None), _ran(this_side)]
        parts.append(select(seconds.label("s")).where(*live, theirs == other, *conditions))
        if replay is not None:
            parts.append(select(seconds.label("s")).where(*replay, *conditions))
    tops = [select(p.order_by(p.selected_columns.s.desc()).limit(m).subquery().c.s) for p in parts]
    merged = union_all(*tops).subquery()
    return select(merged.c.s).order_by(merged.c.s.desc()).offset(m - 1).limit(1)


async def _ranked_p99s(
    session: AsyncSession, config: CutoverConfig, rows: Sequence[TallyRow], replay: list[Any] | None
) -> tuple[float | None, float | None]:
    """Both engines' p99 (nearest rank, as `percentile`): the tally gives how many runs each engine has, so the
    p99's rank from the top; `nth_largest_run` reads that many values."""
    replayed: dict[str, int] = {}
    if replay is not None:
        runs = _runs(replay).subquery()
        replayed = dict((await session.execute(select(runs.c.engine, func.count()).group_by(runs.c.engine))).all())
    found: list[float | None] = []
    for engine in (config.old_engine, config.new_engine):
        total = replayed.get(engine, 0)
        for r in rows:
            if r.primary_engine == engine and ran(r.outcome, r.side, Side.PRIMARY):
                total += r.primary_timed
            if r.shadow_engine == engine and ran(r.outcome, r.side, Side.SHADOW):
                total += r.shadow_timed
        if not total:
            found.append(None)
            continue
        m = total - max(1, math.ceil(0.99 * total)) + 1
        value = await session.scalar(nth_largest_run(config, engine, replay, m))
        found.append(None if value is None else float(value))
    return found[0], found[1]


async def gate_evidence(
    session: AsyncSession, config: CutoverConfig, since: datetime | None, accepted: frozenset[str] = frozenset()
) -> Evidence:
    """The gate's evidence without reading the stage's comparisons: the live ones counted by the tally (kept by
    triggers as comparisons are written and re-judged, migration 0016), the replays (few, and only in `old_only`
    and `shadow`) aggregated; the p99s by rank; the parity check only when a comparison's environments differ.
    The same numbers as `scanned_evidence`."""
    engines = (config.old_engine, config.new_engine)
    rows = await tally(session, config.scope.value, config.scope_id, config.stage.value, config.version, engines)
    replay = replay_window(config, since)
    grouped: list[Any] = [(r.outcome, r.side, r.primary_engine, r.n) for r in rows]
    accepted_mismatches = sum(r.n for r in rows if r.outcome == ComparisonOutcome.MISMATCH and r.signature in accepted)
    if replay is not None:
        grouped += (await session.execute(grouped_counts(replay))).all()
        accepted_mismatches += await _accepted_count(session, replay, accepted)
    parity: tuple[int, str | None] = (0, None)
    if replay is not None or any(r.environment_differs for r in rows):
        parity = await parity_evidence(session, config, evidence_window(config, since))
    p99s = await _ranked_p99s(session, config, rows, replay)
    return _evidence(config, grouped, accepted_mismatches, p99s, parity)


# Whether an engine reports a live worker (None: cannot tell); the API and the reconciler pass their health monitor.
Liveness = Callable[[str], Awaitable[bool | None]]


async def unstarted_legs(session: AsyncSession, config: CutoverConfig, now: datetime) -> int:
    """The new engine's legs of this scope, admitted in this stage, sent more than `start_timeout_seconds` ago and
    neither started nor finished: what a dead engine leaves behind while the broker holds its messages."""
    cutoff = now - timedelta(seconds=config.thresholds.start_timeout_seconds)
    scoped = (
        Result.course_content_id == config.scope_id
        if config.scope == Scope.CONTENT
        else Result.execution_backend_id == config.scope_id
    )
    stmt = (
        select(func.count())
        .select_from(Leg)
        .join(Result, Result.id == Leg.result_id)
        .where(
            scoped,
            Leg.engine == config.new_engine,
            Leg.finished.is_(False),
            Leg.started_at.is_(None),
            Leg.dispatch_state == DispatchState.SENT.value,
            Leg.dispatched_at < cutoff,
        )
    )
    if config.stage_since is not None:
        stmt = stmt.where(Leg.created_at >= config.stage_since)
    return int(await session.scalar(stmt) or 0)


PARITY_LOOK = 500  # environment differences counted per evaluation at most (one is enough to fail)


async def parity_evidence(session: AsyncSession, config: CutoverConfig, where: list[Any]) -> tuple[int, str | None]:
    """How many of the window's comparisons show the two environments differing on a field the migration requires
    equal, and the first of them in words ("celery: time limit 4 s, prefect: 10 s")."""
    parity = config.thresholds.parity
    if not parity:
        return 0, None
    stmt = (
        select(Comparison.environment, Comparison.primary_engine, Comparison.shadow_engine)
        .where(*where, Comparison.environment_differs.is_(True))
        .order_by(Comparison.created_at)
        .limit(PARITY_LOOK)
    )
    breaks, example = 0, None
    for environment, primary, shadow in (await session.execute(stmt)).all():
        found = [d for d in (environment or {}).get("differences", []) if parity_required(d["field"], parity)]
        if found:
            breaks += 1
            example = example or describe_environment(found, primary, shadow)
    return breaks, example


async def latest_environment(session: AsyncSession, config: CutoverConfig) -> dict[str, Any] | None:
    """Each engine's effective environment as the latest comparison between them recorded it, the differences,
    and the differences in words: what the scorecard and `gateway cutover status` show."""
    stmt = (
        select(Comparison.environment, Comparison.primary_engine, Comparison.shadow_engine)
        .where(*evidence_window(config, None, routed=False), Comparison.environment.is_not(None))
        .order_by(Comparison.created_at.desc())
        .limit(1)
    )
    found = (await session.execute(stmt)).first()
    if found is None:
        return None
    environment, primary, shadow = found
    differences = environment.get("differences", [])
    return {
        "engines": {primary: environment.get("primary", {}), shadow: environment.get("shadow", {})},
        "differences": differences,
        "text": describe_environment(differences, primary, shadow) or "same",
        "required": list(config.thresholds.parity),
    }


@dataclass
class GateRun:
    config: CutoverConfig
    evaluation: Evaluation
    next: Next
    applied: bool = False
    event_id: str | None = None
    after: CutoverConfig | None = None
    accepted: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.config.scope.value,
            "scope_id": self.config.scope_id,
            "stage": self.config.stage.value,
            "percentage": self.config.percentage,
            "evaluation": self.evaluation.to_dict(),
            "accepted_clusters": sorted(self.accepted),
            "next": {"step": self.next.step.value, "why": self.next.why},
            "applied": self.applied,
            "event_id": self.event_id,
            "after": self.after.to_dict() if self.after else None,
        }


async def evaluate_one(
    sessions: async_sessionmaker[AsyncSession],
    config: CutoverConfig,
    now: datetime | None = None,
    dry_run: bool = False,
    liveness: Liveness | None = None,
) -> GateRun:
    """Evaluate one migration and (unless a dry run) record it and take the step: demote, promote, or hold."""
    now = now or utcnow()
    async with sessions() as session:
        accepted = active_signatures((await store.acceptances(session, config.scope, config.scope_id)).values(), now)
        evidence = await gate_evidence(session, config, config.stage_since, accepted)
        hold = await current_hold(session, config.scope, config.scope_id)
        unstarted = await unstarted_legs(session, config, now)
    if unstarted:
        # Only asked when it matters (a health probe talks to the engine).
        alive = await liveness(config.new_engine) if liveness is not None else None
        evidence = replace(evidence, new_unstarted=unstarted, new_alive=alive)
    evaluation = evaluate(evidence, config.thresholds)
    step = next_step(config, evaluation, now, hold)
    run = GateRun(config, evaluation, step, accepted=accepted)
    if dry_run:
        return run
    record = {
        **evaluation.to_dict(),
        "at": now.isoformat(),
        "next": run.to_dict()["next"],
        "version": config.version,
        "accepted_clusters": sorted(accepted),  # which acceptances this verdict relied on
        "hold": hold.to_dict() if hold else None,
    }
    await store.record_evaluation(sessions, config, record, now)
    if step.step not in (Step.PROMOTE, Step.DEMOTE):
        return run
    action = Action.PROMOTE if step.step == Step.PROMOTE else Action.DEMOTE
    try:
        change = plan_change(config, action, now, reason=step.why)
        event = await store.save_change(sessions, change, GATE_ACTOR, evaluation=record, now=now)
    except (InvalidChange, store.StaleChange) as exc:  # an operator changed it meanwhile: their change wins
        log.info("gate step %s on %s %s skipped: %s", action, config.scope, config.scope_id, exc)
        return run
    run.applied, run.event_id, run.after = event is not None, event.id if event else None, change.after
    return run


async def evaluate_all(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime | None = None,
    dry_run: bool = False,
    liveness: Liveness | None = None,
) -> list[GateRun]:
    async with sessions() as session:
        rows = list((await session.execute(select(CutoverMigration))).scalars())
    return [await evaluate_one(sessions, store.to_config(row), now, dry_run, liveness) for row in rows]


class GateStep:
    """The periodic evaluation as a reconciler step: at most every `interval` seconds, one process at a time."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        is_postgres: bool,
        interval: float,
        liveness: Liveness | None = None,
    ) -> None:
        self.sessions = sessions
        self.is_postgres = is_postgres
        self.interval = interval
        self.liveness = liveness
        self._next = 0.0

    async def __call__(self) -> int:
        if self.interval <= 0 or time.monotonic() < self._next:
            return 0
        self._next = time.monotonic() + self.interval
        if not self.is_postgres:
            return sum(run.applied for run in await evaluate_all(self.sessions, liveness=self.liveness))
        async with self.sessions() as session, session.begin():
            got = await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": ADVISORY_KEY})
            if not got:  # another process is evaluating right now
                return 0
            return sum(run.applied for run in await evaluate_all(self.sessions, liveness=self.liveness))
