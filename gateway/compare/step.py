"""The compare step: run by the reconciler after every tick, it writes one comparison row per finished pair.

It takes the legs the finish hook marked `compare_due` (a small set: only legs that just finished), loads their
jobs' legs, and for every (primary, shadow) pair of which both are final and that has no comparison yet runs an
`Experiment`. An A/A pair also updates the flake statistics of its course content. A comparator that raises is
recorded as `compare_error` and never stops the step; the marks are cleared in the same transaction.

A live (or replayed) mismatch is re-judged (`gateway.compare.rejudge`), at most `rejudge_per_hour` per course
content: the step writes two re-run legs (the job again on each engine, fenced like any shadow leg, sent by the
outbox), and when both have ended it judges the four reports and updates the comparison's class (`noise` or a
reproduced `mismatch`) and the flake statistics.

Under the `verified` answer policy a canary job's row waits for its pair: written here, from the new engine's
answer where the engines agree and from the old engine's where they disagree (`gateway.compare.answer`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.redact import redact_text
from gateway.compare.answer import verified_answer
from gateway.compare.environment import comparison_environment
from gateway.compare.experiment import Experiment, LegRun, Verdict
from gateway.compare.outcomes import ComparisonOutcome, Side
from gateway.compare.rejudge import RejudgeState, rejudge
from gateway.compare.rules import Rules
from gateway.cutover.triage import signature_of
from gateway.engines import metrics
from gateway.engines.shadowing import ExperimentKind
from gateway.legs.machine import new_leg, row_is_final, write_row_from
from gateway.legs.states import LegRole, verifier_of
from gateway.store.models import CompareRules, Comparison, FlakeStat, Leg, Result, new_id, utcnow
from gateway.store.runs import is_run_of

log = logging.getLogger(__name__)
BATCH = 200
REJUDGE_DEADLINE = timedelta(minutes=30)  # a re-run's deadline when its original shadow leg had none
# The kinds whose mismatches are evidence for a gate, and so worth re-judging.
REJUDGED_KINDS = (ExperimentKind.SHADOW, ExperimentKind.REPLAY)


async def load_rules(session: AsyncSession) -> Rules:
    """The shipped rules with the admin's overrides; broken overrides fall back to the shipped rules (logged)."""
    row = await session.get(CompareRules, "default")
    if row is None or not row.rules:
        return Rules.build()
    try:
        return Rules.build(row.rules)
    except ValueError as exc:
        log.warning("comparison rule overrides ignored: %s", exc)
        return Rules.build()


def leg_run(leg: Leg) -> LegRun:
    return LegRun(
        engine=leg.engine,
        phase=leg.phase,
        outcome=leg.outcome,
        report=leg.payload if isinstance(leg.payload, dict) else None,
        error=leg.error,
        dispatch_state=leg.dispatch_state,
        last_error=leg.last_error,
        created_at=leg.created_at,
        dispatched_at=leg.dispatched_at,
        started_at=leg.started_at,
        finished_at=leg.finished_at,
    )


def experiment_kind(leg: Leg) -> ExperimentKind:
    try:
        return ExperimentKind((leg.routing or {}).get("experiment", ExperimentKind.SHADOW.value))
    except ValueError:
        return ExperimentKind.SHADOW


class CompareStep:
    """Callable as a reconciler tick step; returns how many comparisons it wrote."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], is_postgres: bool, rejudge_per_hour: int = 0
    ) -> None:
        self.sessions = sessions
        self.is_postgres = is_postgres
        self.rejudge_per_hour = rejudge_per_hour

    async def __call__(self) -> int:
        written = 0
        while True:
            n, more = await self._one_batch()
            written += n
            if not more:
                return written

    async def _one_batch(self) -> tuple[int, bool]:
        async with self.sessions() as session, session.begin():
            stmt = select(Leg).where(Leg.compare_due.is_(True)).order_by(Leg.id).limit(BATCH)
            if self.is_postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            due = (await session.execute(stmt)).scalars().all()
            if not due:
                return 0, False
            result_ids = {leg.result_id for leg in due if leg.result_id}
            legs = (await session.execute(select(Leg).where(Leg.result_id.in_(result_ids)))).scalars().all()
            rows = {r.id: r for r in (await session.execute(select(Result).where(Result.id.in_(result_ids)))).scalars()}
            compared = set(
                (
                    await session.execute(select(Comparison.shadow_leg_id).where(Comparison.result_id.in_(result_ids)))
                ).scalars()
            )
            rules = await load_rules(session)
            written = await self._compare_jobs(session, legs, rows, compared, rules)
            await session.execute(update(Leg).where(Leg.id.in_([leg.id for leg in due])).values(compare_due=False))
            labels = [(c.kind, c.primary_engine, c.shadow_engine, c.outcome) for c in written]
        # Counted only once committed: a rolled-back batch is compared again by the next tick.
        metrics.record_comparisons(labels)
        return len(written), len(due) == BATCH

    async def _compare_jobs(
        self,
        session: AsyncSession,
        legs: Sequence[Leg],
        rows: dict[str, Result],
        compared: set[str],
        rules: Rules,
    ) -> list[Comparison]:
        by_job: dict[str, list[Leg]] = defaultdict(list)
        for leg in legs:
            by_job[leg.result_id or ""].append(leg)
        written: list[Comparison] = []
        flakes = _FlakeBook(session)
        budget = _RejudgeBudget(session, self.rejudge_per_hour)
        for result_id, job_legs in by_job.items():
            row = rows.get(result_id)
            primary = _primary_of(job_legs, row)
            if row is None or primary is None or not primary.finished:
                continue
            # A/A pairs first: their flake evidence then already counts for this job's engine-to-engine pair.
            for shadow in sorted(job_legs, key=lambda leg: experiment_kind(leg) != ExperimentKind.AA):
                if shadow.role != LegRole.SHADOW or not shadow.finished or shadow.id in compared:
                    continue
                kind = experiment_kind(shadow)
                if kind == ExperimentKind.REJUDGE:
                    continue  # judged with its twin below, never as a pair of its own
                content = row.course_content_id or ""
                flaky = await flakes.flaky_tests(content, rules.flaky_threshold)
                runs = leg_run(primary), leg_run(shadow)
                verdict = _run(Experiment(rules, flaky.__contains__, aa=kind == ExperimentKind.AA), shadow.id, *runs)
                comparison = _comparison_row(row, primary, shadow, kind, verdict, *runs)
                session.add(comparison)
                if kind == ExperimentKind.AA and verdict.tests_seen:
                    await flakes.record(content, verdict.tests_seen, verdict.tests_flipped)
                compared.add(shadow.id)
                written.append(comparison)
                if verifier_of(primary.role, primary.routing) == shadow.id and not row_is_final(row):
                    _write_verified(row, primary, shadow, verdict)
                rejudgeable = verdict.outcome == ComparisonOutcome.MISMATCH and kind in REJUDGED_KINDS
                if rejudgeable and await budget.take(row):
                    _start_rejudge(session, row, primary, shadow, comparison)
            await _finish_rejudges(session, row, job_legs, rules, flakes)
        return written


def _primary_of(legs: list[Leg], row: Result | None) -> Leg | None:
    """The job's primary leg: the row's current run (an older primary of a re-run row is not it)."""
    primaries = [leg for leg in legs if leg.role == LegRole.PRIMARY]
    if row is not None:
        for leg in primaries:
            if is_run_of(leg, row):
                return leg
    return primaries[0] if primaries else None


def _run(experiment: Experiment, shadow_id: str, primary: LegRun, shadow: LegRun) -> Verdict:
    try:
        return experiment.run(primary, shadow)
    except Exception as exc:  # noqa: BLE001 - the comparator's own failure is an outcome, never a crash
        log.warning("comparison of leg %s failed: %s", shadow_id, redact_text(repr(exc)))
        return Verdict(ComparisonOutcome.COMPARE_ERROR, reason=redact_text(f"{type(exc).__name__}: {exc}")[:500])


# The outcomes that differ on something: their comparisons are clustered (gateway.cutover.triage).
CLUSTERED = (ComparisonOutcome.MISMATCH, ComparisonOutcome.NOISE)


def _comparison_row(
    row: Result, primary: Leg, shadow: Leg, kind: ExperimentKind, verdict: Verdict, p: LegRun, s: LegRun
) -> Comparison:
    """The comparison row; `p` and `s` are the two legs' runs the verdict was made from."""
    return Comparison(
        id=new_id(),
        result_id=row.id,
        primary_leg_id=primary.id,
        shadow_leg_id=shadow.id,
        kind=kind.value,
        execution_backend_id=row.execution_backend_id,
        course_content_id=row.course_content_id,
        primary_engine=primary.engine,
        shadow_engine=shadow.engine,
        outcome=verdict.outcome.value,
        side=verdict.side.value if verdict.side else None,
        reason=verdict.reason,
        differences=verdict.differences or None,
        difference_count=verdict.difference_count,
        signature=signature_of(verdict.outcome.value, verdict.differences) if verdict.outcome in CLUSTERED else None,
        primary_score=verdict.primary_score,
        shadow_score=verdict.shadow_score,
        primary_queue_seconds=p.queue_seconds(),
        shadow_queue_seconds=s.queue_seconds(),
        primary_run_seconds=p.run_seconds(),
        shadow_run_seconds=s.run_seconds(),
        **routed_by_record(primary.routing),
        environment=(env := comparison_environment(p.report, s.report)),
        environment_differs=bool(env and env["differences"]),
        created_at=utcnow(),
    )


def routed_by_record(routing: dict[str, Any] | None) -> dict[str, Any]:
    """The comparison's `routed_*` columns from the primary leg's routing record (None outside a migration)."""
    found = routing or {}
    version = found.get("config_version")
    return {
        "routed_scope": found.get("config_scope"),
        "routed_stage": found.get("stage"),
        "routed_version": int(version) if isinstance(version, int | float) else None,
    }


def _write_verified(row: Result, primary: Leg, shadow: Leg, verdict: Verdict) -> None:
    """The `verified` answer policy's row: the new engine's answer where the engines agree, the old engine's where
    they disagree (gateway.compare.answer); the choice is recorded on the primary leg's routing."""
    answer = verified_answer(verdict.outcome, verdict.side)
    source = primary if answer.source == Side.PRIMARY else shadow
    write_row_from(source, row)
    primary.routing = {**(primary.routing or {}), "answered": answer.to_dict(source.engine)}


class _RejudgeBudget:
    """At most `per_hour` re-judgements per course content (or backend) and hour, counted in the store."""

    def __init__(self, session: AsyncSession, per_hour: int) -> None:
        self.session = session
        self.per_hour = per_hour
        self._used: dict[str, int] = {}

    async def take(self, row: Result) -> bool:
        if self.per_hour <= 0:
            return False
        key = row.course_content_id or row.execution_backend_id or ""
        used = self._used.get(key)
        if used is None:
            scope = (
                Comparison.course_content_id == row.course_content_id
                if row.course_content_id
                else Comparison.execution_backend_id == row.execution_backend_id
            )
            since = utcnow() - timedelta(hours=1)
            stmt = select(func.count()).where(scope, Comparison.rejudge.is_not(None), Comparison.created_at >= since)
            used = int(await self.session.scalar(stmt) or 0)
        if used >= self.per_hour:
            self._used[key] = used
            return False
        self._used[key] = used + 1
        return True


def _start_rejudge(session: AsyncSession, row: Result, primary: Leg, shadow: Leg, comparison: Comparison) -> None:
    """Two re-run legs - the job again on the primary's engine and on the shadow's - fenced like the shadow leg
    (`submit` false, no row write) and due at once (the outbox sends them)."""
    now = utcnow()
    span = shadow.deadline - shadow.created_at if shadow.deadline and shadow.created_at else REJUDGE_DEADLINE
    base = {"experiment": ExperimentKind.REJUDGE.value, "comparison": comparison.id, "primary_leg": primary.id}
    # The shadow's spec is already fenced; the primary engine's re-run keeps the primary's own properties.
    again = {
        "primary": (primary.engine, primary.task_name, {**shadow.spec, "properties": primary.spec.get("properties")}),
        "shadow": (shadow.engine, shadow.task_name, shadow.spec),
    }
    legs = {}
    for side, (engine, task_name, spec) in again.items():
        values = new_leg(
            leg_id=new_id(), result_id=row.id, role=LegRole.SHADOW, engine=engine, task_name=task_name,
            spec={**spec, "properties": spec.get("properties") or {}}, routing={**base, "rejudges": side},
            now=now, due_at=now, deadline=now + span,
        )  # fmt: skip
        session.add(Leg(**values))
        legs[side] = values["id"]
    comparison.rejudge = {
        "state": RejudgeState.RUNNING.value,
        "legs": legs,
        "original_outcome": comparison.outcome,
        "requested_at": now.isoformat(),
    }


async def _finish_rejudges(
    session: AsyncSession, row: Result, legs: Sequence[Leg], rules: Rules, flakes: _FlakeBook
) -> None:
    """Judge every re-judgement of this job whose two re-runs have ended; update the comparison's class."""
    twins: dict[str, dict[str, Leg]] = defaultdict(dict)
    for leg in legs:
        if leg.role == LegRole.SHADOW and leg.finished and experiment_kind(leg) == ExperimentKind.REJUDGE:
            routing = leg.routing or {}
            twins[str(routing.get("comparison"))][str(routing.get("rejudges"))] = leg
    by_id = {leg.id: leg for leg in legs}
    for comparison_id, pair in twins.items():
        if set(pair) != {"primary", "shadow"}:
            continue
        comparison = await session.get(Comparison, comparison_id)
        if comparison is None or (comparison.rejudge or {}).get("state") != RejudgeState.RUNNING:
            continue
        first, second = by_id.get(comparison.primary_leg_id), by_id.get(comparison.shadow_leg_id)
        if first is None or second is None:
            continue
        try:
            judged = rejudge(rules, comparison.differences, leg_run(first), leg_run(second),
                             leg_run(pair["primary"]), leg_run(pair["shadow"]))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a judge that raises leaves the class as it was
            log.warning("re-judgement of comparison %s failed: %s", comparison_id, redact_text(repr(exc)))
            comparison.rejudge = {**comparison.rejudge, "state": RejudgeState.DONE.value, "error": repr(exc)[:300]}
            continue
        comparison.outcome = judged.outcome.value
        comparison.signature = signature_of(judged.outcome.value, comparison.differences)
        comparison.rejudge = {
            **comparison.rejudge, "state": RejudgeState.DONE.value, **judged.to_dict(), "at": utcnow().isoformat(),
        }  # fmt: skip
        for seen, flipped in judged.flake_evidence:
            await flakes.record(row.course_content_id or "", seen, flipped)


class _FlakeBook:
    """The flake statistics of the contents one batch touches, loaded once per content."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._stats: dict[str, dict[str, FlakeStat]] = {}

    async def _load(self, content: str) -> dict[str, FlakeStat]:
        found = self._stats.get(content)
        if found is None:
            stmt = select(FlakeStat).where(FlakeStat.course_content_id == content)
            found = {s.test_key: s for s in (await self.session.execute(stmt)).scalars()}
            self._stats[content] = found
        return found

    async def flaky_tests(self, content: str, threshold: float) -> set[str]:
        stats = await self._load(content)
        return {key for key, s in stats.items() if s.flips > 0 and s.flips / max(1, s.runs) > threshold}

    async def record(self, content: str, seen: frozenset[str], flipped: frozenset[str]) -> None:
        stats = await self._load(content)
        for key in seen:
            stat = stats.get(key)
            if stat is None:
                stat = stats[key] = FlakeStat(id=new_id(), course_content_id=content, test_key=key, runs=0, flips=0)
                self.session.add(stat)
            stat.runs += 1
            stat.flips += int(key in flipped)
            stat.updated_at = utcnow()
