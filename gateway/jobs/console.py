"""The operator console's read models and action previews, over the same services the API and the CLI use.

One source for every number: a migration page's parity, rates, needs and clusters are the scorecard card
(`gateway.jobs.scorecard.card`, also `GET /api/cutover/scorecard` and `gateway cutover status`); this module
adds what only the console shows: the plan, the timeline, traffic and latency per stage and engine, the A/A
noise beside each cluster, one comparison with both reports, the jobs list, and what an action will change.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.compare.diff import tests_by_identity, verdict
from gateway.compare.environment import LABELS, flatten
from gateway.compare.outcomes import ComparisonOutcome
from gateway.cutover.hold import HoldAction
from gateway.cutover.stage_machine import Action, InvalidChange, plan_change
from gateway.cutover.stages import CutoverConfig, Scope, Stage
from gateway.jobs import cutover_changes as changes
from gateway.jobs.cutover_gates import evidence_window, percentile, scope_filter
from gateway.jobs.errors import Conflict, NotFound
from gateway.jobs.scorecard import card
from gateway.legs.states import LegOutcome, LegRole
from gateway.store import console_reads as reads
from gateway.store import cutover_configs as store
from gateway.store.models import (
    Comparison,
    CourseContent,
    CutoverMigration,
    ExecutionBackend,
    FlakeStat,
    User,
    utcnow,
)

JobFilter = reads.JobFilter  # the jobs list's filters, for the console's routes
STAGES = (Stage.OLD_ONLY, Stage.SHADOW, Stage.CANARY, Stage.NEW_PRIMARY, Stage.NEW_ONLY)
INFRA_OUTCOMES = frozenset({LegOutcome.CRASHED, LegOutcome.TIMED_OUT, LegOutcome.REJECTED})


class ConsoleAction(StrEnum):
    """What the console's buttons do: the stage machine's moves and triage."""

    PROMOTE = "promote"
    DEMOTE = "demote"
    ROLLBACK = "rollback"
    ACCEPT = "accept"
    UNACCEPT = "unaccept"
    PAUSE = "pause"
    RESUME = "resume"


STAGE_ACTIONS = {ConsoleAction.PROMOTE: Action.PROMOTE, ConsoleAction.DEMOTE: Action.DEMOTE,
                 ConsoleAction.ROLLBACK: Action.ROLLBACK}  # fmt: skip


HOLD_ACTIONS = {ConsoleAction.PAUSE: HoldAction.PAUSE, ConsoleAction.RESUME: HoldAction.RESUME}


def offered(stage: Stage, paused: bool) -> list[ConsoleAction]:
    """The moves that make sense here: no Promote at new_only, no Demote or Roll back at old_only; Pause while
    automation runs, Resume while it is paused."""
    found = []
    if stage != Stage.NEW_ONLY:
        found.append(ConsoleAction.PROMOTE)
    if stage != Stage.OLD_ONLY:
        found += [ConsoleAction.DEMOTE, ConsoleAction.ROLLBACK]
    found.append(ConsoleAction.RESUME if paused else ConsoleAction.PAUSE)
    return found


# ------------------------------------------------------------------------------------------------------ lookups
async def labels(session: AsyncSession) -> dict[str, str]:
    """Ids → names: backends by slug, contents by path (the console and CLI never show a bare id for these)."""
    backends = (await session.execute(select(ExecutionBackend.id, ExecutionBackend.slug))).all()
    contents = (await session.execute(select(CourseContent.id, CourseContent.path))).all()
    return {**dict(backends), **dict(contents)}


async def student_names(session: AsyncSession) -> dict[str, str]:
    """Course member id → the login name of the user it belongs to (a member without a login keeps its id)."""
    names: dict[str, str] = {}
    for username, members in (await session.execute(select(User.username, User.course_member_ids))).all():
        for member in members or ():
            names.setdefault(member, username)
    return names


async def _migration_row(session: AsyncSession, scope: Scope, key: str) -> tuple[store.ScopeRef, CutoverMigration]:
    try:
        ref = await store.resolve_scope(session, scope, key)
    except store.UnknownScope as exc:
        raise NotFound(str(exc)) from None
    row = await store.load(session, scope, ref.scope_id)
    if row is None:
        raise NotFound(f"no migration for {scope.value} {key}")
    return ref, row


async def migrations(sessions: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
    """The migrations list: each scorecard card with its name."""
    now = utcnow()
    async with sessions() as session:
        names = await labels(session)
    cards = []
    for row in await store.all_migrations(sessions):
        found = await card(sessions, row, now)
        found["label"] = names.get(row.scope_id, row.scope_id)
        cards.append(found)
    return cards


# ----------------------------------------------------------------------------------------------- migration page
def plan(config: CutoverConfig) -> dict[str, Any]:
    """The stages with the canary steps spelled out, where the migration is, and what Promote would lead to."""
    steps: list[dict[str, Any]] = []
    for stage in STAGES:
        if stage == Stage.CANARY:
            for pct in config.canary_steps:
                current = config.stage == stage and math.isclose(config.percentage, pct)
                label = f"canary {pct:g} %"
                steps.append({"stage": stage.value, "percentage": pct, "label": label, "current": current})
        else:
            steps.append({"stage": stage.value, "percentage": None, "label": stage.value,
                          "current": config.stage == stage})  # fmt: skip
    try:
        target = plan_change(config, Action.PROMOTE, utcnow()).after
        next_target = target.stage.value + (f" {target.percentage:g} %" if target.stage == Stage.CANARY else "")
    except InvalidChange:
        next_target = None
    return {
        "steps": steps,
        "next_target": next_target,
        "thresholds": config.thresholds.to_dict(),
        "min_stage_seconds": config.min_stage_seconds,
        "policy": config.policy.value,
        "shadow_fraction": config.shadow_fraction,
    }


def _interval_line(name: str, value: Any) -> str:
    """One of an evaluation's decisions in words: "mismatch: 12.5 % (95 %: 4.3–31 %), above 1 %, ..." """
    if isinstance(value, dict) and "text" in value:
        parts = [f"{name.replace('_', ' ')}: {value['text']}"]
        if value.get("threshold") is not None:
            parts.append(f"{value.get('side', '')} the threshold {value['threshold'] * 100:g} %")
        if value.get("more_trials"):
            parts.append(f"about {value['more_trials']} more samples would decide")
        return ", ".join(parts)
    return f"{name.replace('_', ' ')}: {value}"


def _evaluation_line(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    """An evaluation as the timeline shows it: verdict, deciding criterion, needs, and every number it carried."""
    if not evaluation:
        return None
    numbers = {k: v for k, v in (evaluation.get("evidence") or {}).items() if v is not None and k != "parity_example"}
    extra = [_interval_line(k, v) for k, v in evaluation.items()
             if k not in ("verdict", "decided_by", "failing", "needs", "evidence") and v is not None]  # fmt: skip
    return {
        "verdict": evaluation.get("verdict"),
        "decided_by": evaluation.get("decided_by"),
        "needs": evaluation.get("needs") or [],
        "numbers": numbers,
        "confidence": extra,
    }


def traffic(legs: list[reads.LegRow]) -> list[dict[str, Any]]:
    """Per stage (as routed) and engine: jobs served (primary legs), shadow runs, students, queue wait and run
    time (p50/p95 of the finished legs), infra errors (crashed, timed out, refused) and legs still running."""
    groups: dict[tuple[str, str], list[reads.LegRow]] = defaultdict(list)
    for leg in legs:
        groups[(leg.stage or "(no migration)", leg.engine)].append(leg)
    order = {s.value: i for i, s in enumerate(STAGES)}
    rows = []
    for (stage, engine), found in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        queue = [x.queue_seconds for x in found if x.queue_seconds is not None]
        run = [x.run_seconds for x in found if x.run_seconds is not None and x.finished]
        ended = [x for x in found if x.finished]
        infra = sum(x.outcome in INFRA_OUTCOMES for x in ended)
        rows.append(
            {
                "stage": stage,
                "engine": engine,
                "jobs": sum(x.role == LegRole.PRIMARY for x in found),
                "shadow_runs": sum(x.role == LegRole.SHADOW for x in found),
                "students": len({x.member for x in found if x.role == LegRole.PRIMARY and x.member}),
                "queue_p50": percentile(queue, 0.5),
                "queue_p95": percentile(queue, 0.95),
                "run_p50": percentile(run, 0.5),
                "run_p95": percentile(run, 0.95),
                "infra_errors": infra,
                "infra_error_rate": infra / len(ended) if ended else None,
                "in_flight": len(found) - len(ended),
            }
        )
    return rows


async def _aa_noise(session: AsyncSession, config: CutoverConfig, clusters: list[dict[str, Any]]) -> None:
    """Beside each cluster, what the A/A baseline says: A/A pairs showing the same signature out of all A/A
    pairs in the scope, and the flake rate of its tests (flips / runs) on this content."""
    aa_where = [scope_filter(config), Comparison.kind == "aa"]
    total = int(await session.scalar(select(func.count()).where(*aa_where)) or 0)
    flakes: dict[str, tuple[int, int]] = {}
    contents = [config.scope_id] if config.scope == Scope.CONTENT else None
    stmt = select(FlakeStat.test_key, FlakeStat.runs, FlakeStat.flips)
    if contents is not None:
        stmt = stmt.where(FlakeStat.course_content_id.in_(contents))
    for test_key, runs, flips in (await session.execute(stmt)).all():
        old = flakes.get(test_key, (0, 0))
        flakes[test_key] = (old[0] + runs, old[1] + flips)
    for cluster in clusters:
        same = 0
        if cluster["signature"]:
            same = int(
                await session.scalar(
                    select(func.count()).where(*aa_where, Comparison.signature == cluster["signature"])
                )
                or 0
            )
        tests = {}
        for test in cluster["tests"]:
            runs, flips = flakes.get(test, (0, 0))
            tests[test] = {"runs": runs, "flips": flips, "rate": flips / runs if runs else None}
        cluster["aa"] = {"pairs": total, "same_signature": same, "tests": tests}


async def migration_page(sessions: async_sessionmaker[AsyncSession], scope: Scope, key: str) -> dict[str, Any]:
    """Everything the migration page shows, in one read."""
    now = utcnow()
    async with sessions() as session:
        ref, row = await _migration_row(session, scope, key)
    found = await card(sessions, row, now)
    config = store.to_config(row)
    async with sessions() as session:
        legs = await reads.scope_legs(session, config)
        await _aa_noise(session, config, found["clusters"] + found["accepted_clusters"])
        names = await labels(session)
    events = await changes.history(sessions, scope, ref.scope_id, 200)
    timeline = [{**e, "evaluation": _evaluation_line(e["evaluation"])} for e in events]
    return {
        "card": {**found, "label": ref.label},
        "key": ref.label,
        "plan": plan(config),
        "timeline": timeline,
        "last_evaluation": _evaluation_line(row.last_evaluation),
        "traffic": traffic(legs),
        "offered": [a.value for a in offered(config.stage, found["paused"])],
        "names": names,
    }


# --------------------------------------------------------------------------------------------- action previews
@dataclass(frozen=True)
class Preview:
    """What an action will change, in words, and the version it was planned on (sent back with the form)."""

    action: ConsoleAction
    summary: str
    details: list[str]
    version: int
    moving: int
    in_flight: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action.value, "summary": self.summary, "details": self.details,
                "version": self.version, "moving": self.moving, "in_flight": self.in_flight}  # fmt: skip


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith(('ch', 's')) else 's'}"


async def preview(
    sessions: async_sessionmaker[AsyncSession], scope: Scope, key: str, action: ConsoleAction, signature: str = ""
) -> Preview:
    """Plan `action` without saving it and say what it changes: students whose next job moves engine, jobs in
    flight (they stay where they are: a leg is pinned to its engine), or the cluster an acceptance covers."""
    async with sessions() as session:
        ref, row = await _migration_row(session, scope, key)
        config = store.to_config(row)
        pairs = await reads.scope_members(session, config)
        flying = await reads.in_flight(session, config)
    pinned = ", ".join(f"{n} on {engine}" for engine, n in sorted(flying.items())) or "none"
    if action in STAGE_ACTIONS:
        result = await changes.change_migration(
            sessions, scope, key, STAGE_ACTIONS[action], actor="preview", dry_run=True
        )
        after = result.change.after
        moves = [p for p in changes.placements(config, after, ref.legacy_engine or "", pairs) if p.moves]
        by_engine: dict[str, set[str]] = defaultdict(set)
        for p in moves:
            by_engine[p.after].add(p.course_member_id)
        target = after.stage.value + (f" {after.percentage:g} %" if after.stage == Stage.CANARY else "")
        moved = ", ".join(
            f"{_plural(len(m), 'student')} move{'s' if len(m) == 1 else ''} "
            f"{'back ' if e == config.old_engine else ''}to {e.capitalize()}"
            for e, m in sorted(by_engine.items())
        )
        summary = f"{action.value} to {target}: {moved or 'no student changes engine'}"
        details = [
            f"{ref.label}: {config.stage.value} → {target} (version {config.version} → {config.version + 1})",
            f"jobs in flight stay on the engine that took them: {pinned}",
        ]
        if action in (ConsoleAction.ROLLBACK, ConsoleAction.DEMOTE):
            details.append("automation is paused until an operator resumes it (the gate will not walk it forward)")
        return Preview(action, summary, details, config.version, sum(len(m) for m in by_engine.values()), flying)
    if action in (ConsoleAction.ACCEPT, ConsoleAction.UNACCEPT):
        async with sessions() as session:
            n = int(
                await session.scalar(
                    select(func.count()).where(
                        # Live evidence of any stage (not the A/A baseline): what the acceptance takes out of the gate.
                        *evidence_window(config, None, routed=False),
                        Comparison.signature == signature,
                        Comparison.outcome == ComparisonOutcome.MISMATCH.value,
                    )
                )
                or 0
            )
        verb = "stop counting against" if action == ConsoleAction.ACCEPT else "count again against"
        summary = f"{action.value} cluster {signature} of {ref.label}: {_plural(n, 'mismatch')} {verb} the gate"
        return Preview(action, summary, [f"only this cluster, only in {scope.value} {ref.label}"], config.version, 0,
                       flying)  # fmt: skip
    if action in HOLD_ACTIONS:
        if action == ConsoleAction.PAUSE:
            summary = (
                f"pause automation of {ref.label}: the gate stops promoting it (it still demotes on a Failed gate)"
            )
        else:
            summary = f"resume automation of {ref.label}: the gate may promote it again ({config.policy.value} policy)"
        return Preview(action, summary, [f"stage stays {config.stage.value}; no student changes engine"],
                       config.version, 0, flying)  # fmt: skip
    raise NotFound(f"unknown action {action}")


def check_version(config_version: int, expected: int | None) -> None:
    """The page's version against the migration's: a stale page gets the 409."""
    if expected is not None and expected != config_version:
        raise Conflict(f"the migration is at version {config_version}, not {expected}: reload the page")


async def current_version(sessions: async_sessionmaker[AsyncSession], scope: Scope, key: str) -> int:
    async with sessions() as session:
        _ref, row = await _migration_row(session, scope, key)
    return row.version


# ---------------------------------------------------------------------------------------------- comparison page
def side_by_side(primary: dict[str, Any] | None, shadow: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Both reports' tests in one table: identity, each side's status and result, whether they differ."""
    left = tests_by_identity(primary or {})
    right = tests_by_identity(shadow or {})
    rows = []
    for key in sorted(set(left) | set(right)):
        a, b = left.get(key), right.get(key)
        va, vb = verdict(a[2] if a else None), verdict(b[2] if b else None)
        rows.append(
            {
                "test": key,
                "primary": {"status": va[0], "result": va[1]} if va else None,
                "shadow": {"status": vb[0], "result": vb[1]} if vb else None,
                "differs": va != vb,
            }
        )
    return rows


def environment_rows(environment: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Both legs' effective environments field by field (interpreter, pytest, limits...), the differing marked."""
    if not environment:
        return []
    left, right = flatten(environment.get("primary")), flatten(environment.get("shadow"))
    return [
        {
            "field": k,
            "label": LABELS.get(k, (k, ""))[0],
            "primary": left.get(k),
            "shadow": right.get(k),
            "differs": k in left and k in right and left[k] != right[k],
        }  # fmt: skip
        for k in sorted(left.keys() | right.keys())
    ]


def summary_rows(primary: dict[str, Any] | None, shadow: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Both reports' summaries key by key, the differing ones marked."""
    a, b = (primary or {}).get("summary") or {}, (shadow or {}).get("summary") or {}
    return [{"key": k, "primary": a.get(k), "shadow": b.get(k), "differs": a.get(k) != b.get(k)}
            for k in sorted(set(a) | set(b))]  # fmt: skip


async def migration_of(session: AsyncSession, comparison: Comparison) -> CutoverMigration | None:
    """The migration that judged this comparison: its content's override, else its backend's."""
    for scope, scope_id in ((Scope.CONTENT, comparison.course_content_id),
                            (Scope.BACKEND, comparison.execution_backend_id)):  # fmt: skip
        if scope_id:
            row = await store.load(session, scope, scope_id)
            if row is not None:
                return row
    return None


async def comparison_page(sessions: async_sessionmaker[AsyncSession], comparison_id: str) -> dict[str, Any]:
    """One comparison: the job, both legs and their reports side by side, the recorded differences in full."""
    now = utcnow()
    async with sessions() as session:
        found = await reads.comparison_with_legs(session, comparison_id)
        if found is None:
            raise NotFound("No such comparison")
        comparison, result, legs = found
        migration = await migration_of(session, comparison)
        names = await labels(session)
        students = await student_names(session)
        acceptances = await store.acceptances(session, Scope(migration.scope), migration.scope_id) if migration else {}
    by_id = {leg.id: leg for leg in legs}
    primary, shadow = by_id.get(comparison.primary_leg_id), by_id.get(comparison.shadow_leg_id)
    p_report = primary.payload if primary is not None and isinstance(primary.payload, dict) else None
    s_report = shadow.payload if shadow is not None and isinstance(shadow.payload, dict) else None
    acceptance = acceptances.get(comparison.signature or "")
    return {
        "id": comparison.id,
        "kind": comparison.kind,
        "outcome": comparison.outcome,
        "side": comparison.side,
        "reason": comparison.reason,
        "signature": comparison.signature,
        "created_at": comparison.created_at.isoformat(),
        "engines": {"primary": comparison.primary_engine, "shadow": comparison.shadow_engine},
        "scores": {"primary": comparison.primary_score, "shadow": comparison.shadow_score},
        "run_seconds": {"primary": comparison.primary_run_seconds, "shadow": comparison.shadow_run_seconds},
        "queue_seconds": {"primary": comparison.primary_queue_seconds, "shadow": comparison.shadow_queue_seconds},
        "differences": comparison.differences or [],
        "tests": side_by_side(p_report, s_report),
        "summary": summary_rows(p_report, s_report),
        "environment": environment_rows(comparison.environment),
        "has_reports": {"primary": p_report is not None, "shadow": s_report is not None},
        "job": {
            "result_id": comparison.result_id,
            "student": result.course_member_id if result else None,
            "student_name": students.get(result.course_member_id or "", result.course_member_id) if result else None,
            "commit": result.version_identifier if result else None,
            "content": names.get(comparison.course_content_id or "", comparison.course_content_id),
            "backend": names.get(comparison.execution_backend_id or "", comparison.execution_backend_id),
        },
        "migration": (
            {
                "scope": migration.scope,
                "key": names.get(migration.scope_id, migration.scope_id),
                "version": migration.version,
                "stage": migration.stage,
            }  # fmt: skip
            if migration
            else None
        ),
        "acceptance": acceptance.to_dict(now) if acceptance else None,
    }


async def cluster_page(
    sessions: async_sessionmaker[AsyncSession], scope: Scope, key: str, signature: str
) -> dict[str, Any]:
    """A cluster's comparisons (each student, commit and job) within the migration's scope, newest first."""
    async with sessions() as session:
        ref, row = await _migration_row(session, scope, key)
        config = store.to_config(row)
        found = await reads.comparisons_of_cluster(session, [scope_filter(config)], signature)
        students = await student_names(session)
    return {
        "key": ref.label,
        "scope": scope.value,
        "signature": signature,
        "comparisons": [
            {
                "id": c.id,
                "kind": c.kind,
                "outcome": c.outcome,
                "at": c.created_at.isoformat(),
                "student": students.get(r.course_member_id or "", r.course_member_id) if r else None,
                "commit": r.version_identifier if r else None,
                "result_id": c.result_id,
                "engines": f"{c.primary_engine} → {c.shadow_engine}",
            }  # fmt: skip
            for c, r in found
        ],
    }


# ---------------------------------------------------------------------------------------------------- jobs list
async def jobs_page(
    sessions: async_sessionmaker[AsyncSession], f: reads.JobFilter, limit: int = 200
) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = await reads.jobs(session, None, f, limit)
        names = await labels(session)
        students = await student_names(session)
    return [
        {
            "result_id": r.id,
            "at": r.created_at.isoformat() if r.created_at else None,
            "student": r.course_member_id,
            "student_name": students.get(r.course_member_id or "", r.course_member_id),
            "content": names.get(r.course_content_id or "", r.course_content_id),
            "commit": r.version_identifier,
            "grade": r.result,
            "engine": engine,
            "outcome": outcome or phase,
            "comparison_id": cmp_id,
            "comparison": cmp_outcome,
        }
        for r, engine, outcome, phase, cmp_id, cmp_outcome in rows
    ]


def since_text(at: datetime | None, now: datetime | None = None) -> str:
    if at is None:
        return "–"
    seconds = ((now or utcnow()) - at).total_seconds()
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
