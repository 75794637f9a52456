"""The gate's tally (`gate_tally`, kept by triggers, migration 0016) agrees with a recount of the comparisons after
inserts, re-judgements (mismatch -> noise, and back), other updates, deletions and stage changes; and the gate's
evidence from it equals the evidence read from the rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update

from gateway.compare.step import routed_by_record
from gateway.cutover.gates import Evidence
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import CutoverConfig, Scope, Stage
from gateway.cutover.triage import signature_of
from gateway.jobs import cutover_changes as service
from gateway.jobs import cutover_gates as gates
from gateway.runtime import GatewayState
from gateway.store.models import Comparison, GateTally, Leg, new_id, utcnow
from tests.fast.conftest import ADMIN, MemoryGateway, body

pytestmark = pytest.mark.fast

CONTENT = "cc-prefect"
OUTCOMES = ["match"] * 6 + ["mismatch", "noise", "infra_error", "shadow_timeout", "compare_error", "late"]
SIDES = {"infra_error": ["primary", "shadow", "both"]}
DIFFS = [[{"path": "$.score"}], [{"test": "t1", "path": "$.tests.t1"}]]


async def config_of(state: GatewayState) -> CutoverConfig:
    _ref, config = await service.current(state.sessions, Scope.CONTENT, CONTENT)
    assert config is not None
    return config


async def write(
    state: GatewayState, config: CutoverConfig, rng: random.Random, count: int, kind: str = "shadow"
) -> None:
    """`count` comparisons of one job routed by the migration as it is now, of random classes and run times (some
    missing), some with differing environments, either engine primary; as the compare step writes them."""
    from gateway.jobs.submit import submit_test

    row, _ = await submit_test(state, ADMIN, body(new_id()[:8], content="week2/ex1"))
    async with state.sessions() as session, session.begin():
        primary, routing = (await session.execute(
            select(Leg.id, Leg.routing).where(Leg.result_id == row.id, Leg.role == "primary"))).one()  # fmt: skip
        for _ in range(count):
            outcome = rng.choice(OUTCOMES)
            differences = rng.choice(DIFFS) if outcome in ("mismatch", "noise") else None
            engines = [config.old_engine, config.new_engine]
            rng.shuffle(engines)
            session.add(
                Comparison(
                    id=new_id(), result_id=row.id, primary_leg_id=primary, shadow_leg_id=new_id(), kind=kind,
                    **routed_by_record(routing), execution_backend_id=row.execution_backend_id,
                    course_content_id=CONTENT, primary_engine=engines[0], shadow_engine=engines[1],
                    outcome=outcome, side=rng.choice(SIDES.get(outcome, [None])),
                    primary_run_seconds=rng.choice([None, round(rng.uniform(1, 9), 1)]),
                    shadow_run_seconds=round(rng.uniform(1, 9), 1), differences=differences,
                    signature=signature_of(outcome, differences) if differences else None,
                    environment_differs=rng.random() < 0.1, created_at=utcnow() + timedelta(milliseconds=1),
                )
            )  # fmt: skip


async def evidence(state: GatewayState, config: CutoverConfig) -> Evidence:
    async with state.sessions() as session:
        return await gates.gate_evidence(session, config, config.stage_since)


def recount(rows: list[Any]) -> Counter[tuple[Any, ...]]:
    """What the tally must hold, counted in Python from the comparison rows (zero counts dropped)."""
    found: Counter[tuple[Any, ...]] = Counter()
    for c in rows:
        scope_id = {"content": c.course_content_id, "backend": c.execution_backend_id}.get(c.routed_scope or "")
        if c.kind != "shadow" or scope_id is None or c.routed_stage is None or c.routed_version is None:
            continue
        key = (c.routed_scope, scope_id, c.routed_stage, c.routed_version, c.primary_engine, c.shadow_engine,
               c.outcome, c.side or "", (c.signature or "") if c.outcome == "mismatch" else "")  # fmt: skip
        for name, value in (("n", 1), ("primary_timed", c.primary_run_seconds is not None),
                            ("shadow_timed", c.shadow_run_seconds is not None),
                            ("environment_differs", bool(c.environment_differs))):  # fmt: skip
            found[(*key, name)] += int(value)
    return +found


async def assert_agrees(state: GatewayState, accepted: frozenset[str] = frozenset()) -> None:
    async with state.sessions() as session:
        rows = (await session.execute(select(Comparison))).scalars().all()
        kept: Counter[tuple[Any, ...]] = Counter()
        for t in (await session.execute(select(GateTally))).scalars():
            key = (t.scope, t.scope_id, t.stage, t.version, t.primary_engine, t.shadow_engine, t.outcome, t.side,
                   t.signature)  # fmt: skip
            for name in ("n", "primary_timed", "shadow_timed", "environment_differs"):
                kept[(*key, name)] += getattr(t, name)
        assert +kept == recount(list(rows))
        assert all(value >= 0 for value in kept.values())
        config = await config_of(state)
        tallied = await gates.gate_evidence(session, config, config.stage_since, accepted)
        scanned = await gates.scanned_evidence(session, config, config.stage_since, accepted)
        by_rows, _ = gates.evidence_of(config, await gates.comparison_rows(session, config, config.stage_since, True),
                                       accepted)  # fmt: skip
    assert tallied == scanned
    assert (tallied.comparable, tallied.mismatches, tallied.old_legs, tallied.new_legs) == (
        by_rows.comparable, by_rows.mismatches, by_rows.old_legs, by_rows.new_legs)  # fmt: skip
    assert (tallied.old_p99_seconds, tallied.new_p99_seconds) == (by_rows.old_p99_seconds, by_rows.new_p99_seconds)


@pytest.mark.parametrize("store_fixture", ["memory_gateway", "memory_gateway_pg"])
def test_the_tally_agrees_with_a_recount_through_writes_rejudgements_and_stage_changes(
    request: pytest.FixtureRequest, store_fixture: str
) -> None:
    memory_gateway: MemoryGateway = request.getfixturevalue(store_fixture)
    rng = random.Random(1016)
    accepted = frozenset({signature_of("mismatch", DIFFS[0])})

    async def test(state: GatewayState) -> None:
        await service.change_migration(state.sessions, Scope.CONTENT, CONTENT, Action.SET, "admin",
                                       new_engine="celery", stage=Stage.SHADOW)  # fmt: skip
        config = await config_of(state)
        for _ in range(3):
            await write(state, config, rng, 40)
        await write(state, config, rng, 10, kind="replay")  # replays: evidence in shadow, never in the tally
        await write(state, config, rng, 5, kind="aa")
        await assert_agrees(state, accepted)
        assert (await evidence(state, config)).comparable > 0

        # Re-judgements as the compare step ends them: a mismatch becomes noise (its signature with it), one the other
        # way; the counts move with the class.
        async with state.sessions() as session, session.begin():
            found = (await session.execute(select(Comparison).where(Comparison.kind == "shadow"))).scalars().all()
            mismatches = [c for c in found if c.outcome == "mismatch"]
            noise = [c for c in found if c.outcome == "noise"]
            assert mismatches and noise
            for c in mismatches[: len(mismatches) // 2 + 1]:
                c.outcome, c.signature = "noise", signature_of("noise", c.differences)
            noise[0].outcome, noise[0].signature = "mismatch", signature_of("mismatch", noise[0].differences)
        await assert_agrees(state, accepted)

        # A bulk update of several keys in one statement, and deletions (a job's row deleted: its comparisons go).
        async with state.sessions() as session, session.begin():
            bulk = update(Comparison).where(Comparison.outcome == "compare_error")
            await session.execute(bulk.values(outcome="match", shadow_run_seconds=None, environment_differs=True))
            victim = (await session.execute(select(Comparison.result_id).where(Comparison.kind == "shadow"))).first()
            assert victim is not None
            await session.execute(delete(Comparison).where(Comparison.result_id == victim[0]))
        await assert_agrees(state, accepted)

        # Stage changes: canary (a new stage and version), then a canary step (a new version): each gate sees
        # only what it routed, and the earlier stages' counts stay as they were.
        await service.change_migration(state.sessions, Scope.CONTENT, CONTENT, Action.SET, "admin",
                                       stage=Stage.CANARY, percentage=10)  # fmt: skip
        canary = await config_of(state)
        assert (await evidence(state, canary)).comparable == 0
        await assert_agrees(state, accepted)
        await write(state, canary, rng, 30)
        await assert_agrees(state, accepted)
        await service.change_migration(state.sessions, Scope.CONTENT, CONTENT, Action.SET, "admin",
                                       stage=Stage.CANARY, percentage=50)  # fmt: skip
        await write(state, await config_of(state), rng, 25)
        await assert_agrees(state, accepted)

    memory_gateway.run(test)


@pytest.mark.parametrize("store_fixture", ["memory_gateway", "memory_gateway_pg"])
def test_the_backfill_counts_the_comparisons_written_before_the_tally(
    request: pytest.FixtureRequest, store_fixture: str
) -> None:
    """Migration 0016's backfill is the triggers' own count: emptied and backfilled, the tally is what it was."""
    path = Path(__file__).parents[2] / "migrations" / "versions" / "0016_gate1m_tally.py"
    spec = importlib.util.spec_from_file_location("revision_0016", path)
    assert spec is not None and spec.loader is not None
    revision = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(revision)
    memory_gateway: MemoryGateway = request.getfixturevalue(store_fixture)
    rng = random.Random(29)

    async def test(state: GatewayState) -> None:
        await service.change_migration(state.sessions, Scope.CONTENT, CONTENT, Action.SET, "admin",
                                       new_engine="celery", stage=Stage.CANARY, percentage=25)  # fmt: skip
        await write(state, await config_of(state), rng, 60)
        async with state.sessions() as session:
            before = sorted(map(tuple, (await session.execute(select(GateTally.__table__))).all()))
        async with state.sessions() as session, session.begin():
            await session.execute(delete(GateTally))
            await session.execute(text(revision._upsert(revision._select("comparison", "1"))))
        async with state.sessions() as session:
            after = sorted(map(tuple, (await session.execute(select(GateTally.__table__))).all()))
        assert after == before and before
        await assert_agrees(state)

    memory_gateway.run(test)
