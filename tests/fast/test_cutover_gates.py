"""Gates over the comparison table (engine-free): the evidence window, auto promotion through every stage,
demotion on a Failed gate in any policy, dry runs, and the scorecard's numbers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from gateway.compare.step import routed_by_record
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import CutoverConfig, Scope, Stage
from gateway.cutover.triage import signature_of
from gateway.jobs import cutover_changes as service
from gateway.jobs import cutover_gates as gates
from gateway.jobs.scorecard import scorecard
from gateway.runtime import GatewayState
from gateway.store import cutover_configs as store
from gateway.store.models import Comparison, Leg, new_id, utcnow
from tests.fast.conftest import ADMIN, MemoryGateway, body

pytestmark = pytest.mark.fast

# A low confidence level, so that a handful of rows decides (the intervals are judged in test_gate_confidence).
FAST = {
    "min_samples": 4,
    "max_mismatch_rate": 0.2,
    "max_infra_error_rate": 0.2,
    "max_p99_ratio": 2.0,
    "confidence": 0.5,
}


async def comparisons(state: GatewayState, config: CutoverConfig, outcomes: list[str], **extra: Any) -> None:
    """Comparison rows as the compare step writes them, old engine primary, the new one shadowing."""
    from gateway.jobs.submit import submit_test

    row, _ = await submit_test(state, ADMIN, body(new_id()[:8], content="week2/ex1"))
    now = utcnow()
    async with state.sessions() as session, session.begin():
        # The job's primary leg, routed by the migration as it is now: the gate weighs only this stage's jobs.
        primary, routing = (await session.execute(
            select(Leg.id, Leg.routing).where(Leg.result_id == row.id, Leg.role == "primary"))).one()  # fmt: skip
        for outcome in outcomes:
            session.add(
                Comparison(
                    id=new_id(), result_id=row.id, primary_leg_id=primary, shadow_leg_id=new_id(), kind="shadow",
                    **routed_by_record(routing),
                    execution_backend_id=row.execution_backend_id, course_content_id="cc-prefect",
                    primary_engine=config.old_engine, shadow_engine=config.new_engine, outcome=outcome,
                    side=extra.get("side"), primary_run_seconds=extra.get("old_run", 1.0),
                    shadow_run_seconds=extra.get("new_run", 1.2),
                    differences=extra.get("differences"), created_at=now + timedelta(milliseconds=1),
                    signature=signature_of(outcome, extra.get("differences"))
                    if outcome in ("mismatch", "noise") else None,
                )
            )  # fmt: skip


async def config_of(state: GatewayState) -> CutoverConfig:
    _ref, config = await service.current(state.sessions, Scope.CONTENT, "cc-prefect")
    assert config is not None
    return config


def test_auto_policy_walks_old_only_to_new_only_on_evidence(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.OLD_ONLY, policy="auto",
                                       min_stage_seconds=0, canary_steps=[10, 50], thresholds=FAST)  # fmt: skip
        walked = [((await config_of(state)).stage.value, (await config_of(state)).percentage)]
        for _ in range(10):
            config = await config_of(state)
            if config.stage == Stage.NEW_ONLY:
                break
            before = await gates.evaluate_one(state.sessions, config)
            if config.stage != Stage.OLD_ONLY:
                # No evidence yet in this stage: Inconclusive, nothing moves.
                assert before.evaluation.verdict.value == "Inconclusive" and not before.applied
                await comparisons(state, config, ["match"] * 4)
                run = await gates.evaluate_one(state.sessions, config)
            else:
                run = before
            assert run.applied, run.to_dict()
            after = await config_of(state)
            walked.append((after.stage.value, after.percentage))
        assert walked == [
            ("old_only", 0), ("shadow", 0), ("canary", 10), ("canary", 50), ("new_primary", 100), ("new_only", 100),
        ]  # fmt: skip
        events = await store.history(state.sessions, Scope.CONTENT, "cc-prefect")
        assert [e.actor for e in events[:5]] == ["gate"] * 5
        assert all(e.evaluation is not None for e in events[:4])  # each promotion carries its evidence

    memory_gateway.run(test)


@pytest.mark.parametrize("policy", ["manual", "auto"])
def test_a_failed_gate_in_canary_demotes_in_every_policy(memory_gateway: MemoryGateway, policy: str) -> None:
    async def test(state: GatewayState) -> None:
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.CANARY, percentage=25, policy=policy,
                                       thresholds=FAST)  # fmt: skip
        config = await config_of(state)
        await comparisons(state, config, ["match", "match", "mismatch", "mismatch"])
        dry = await gates.evaluate_one(state.sessions, config, dry_run=True)
        assert dry.next.step.value == "demote" and not dry.applied
        assert (await config_of(state)).version == config.version  # the dry run changed nothing
        run = await gates.evaluate_one(state.sessions, config)
        assert run.applied and (await config_of(state)).stage == Stage.SHADOW
        (event, *_rest) = await store.history(state.sessions, Scope.CONTENT, "cc-prefect")
        assert (event.actor, event.action, event.from_stage, event.to_stage) == ("gate", "demote", "canary", "shadow")
        assert "mismatch 50 % (50 %: 34–66 %) above 20 %" in event.reason

    memory_gateway.run(test)


def test_noise_and_new_engine_infra_errors_are_judged_apart(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.SHADOW, thresholds=FAST)  # fmt: skip
        config = await config_of(state)
        await comparisons(state, config, ["match", "match", "noise", "noise"])
        assert (await gates.evaluate_one(state.sessions, config, dry_run=True)).evaluation.verdict.value == "Successful"
        await comparisons(state, config, ["infra_error"] * 3, side="shadow")  # the new engine (shadow) failed
        await comparisons(state, config, ["infra_error"] * 3, side="primary")  # the old one: not held against new
        run = await gates.evaluate_one(state.sessions, config, dry_run=True)
        assert run.evaluation.decided_by.value == "infra_error_rate"
        assert (run.evaluation.evidence.new_infra_errors, run.evaluation.evidence.old_infra_errors) == (3, 3)
        (card,) = await scorecard(state.sessions)
        assert card["label"] == "week2.ex1" and card["samples"] == 4
        assert (card["parity_raw"], card["parity"]) == (0.5, 1.0)
        assert card["engines"]["celery"]["infra_errors"] == 3 and card["engines"]["prefect"]["infra_errors"] == 3
        # every rate with its interval, at the migration's confidence level (one source: the gate's evaluation)
        assert card["mismatch"]["text"] == "0 % (50 %: 0–10.2 %)" and card["confidence"] == 0.5
        assert card["engines"]["celery"]["infra_error"]["text"] == "30 % (50 %: 21.3–40.5 %)"
        assert card["engines"]["celery"]["p99_seconds"] == 1.2 and card["engines"]["prefect"]["p50_seconds"] == 1.0
        assert card["needs"] and card["needs"][0].startswith("new engine infra error 30 %")
        assert sum(point["samples"] for point in card["series"]) == 4

    memory_gateway.run(test)


def test_mismatch_clusters_on_the_scorecard(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.SHADOW)  # fmt: skip
        config = await config_of(state)
        diff = [{"path": '$.tests["t.py"].tests["test_add"].result', "primary": "PASSED", "shadow": "FAILED",
                 "test": "t.py::test_add"}]  # fmt: skip
        await comparisons(state, config, ["mismatch"] * 3, differences=diff)
        (card,) = await scorecard(state.sessions)
        (cluster,) = card["clusters"]
        assert (cluster["count"], cluster["signature"], cluster["status"]) == (
            3,
            signature_of("mismatch", diff),
            "open",
        )
        assert (cluster["tests"], cluster["paths"]) == (["t.py::test_add"], [diff[0]["path"]])
        assert cluster["sample"]["differences"] == diff and card["accepted_clusters"] == []

    memory_gateway.run(test)


@pytest.mark.parametrize("store_fixture", ["memory_gateway", "memory_gateway_pg"])
def test_the_gate_aggregates_in_the_database_like_the_scorecard_over_rows(
    request: pytest.FixtureRequest, store_fixture: str
) -> None:
    """Counts and p99 from SQL (`gate_evidence`, percentile_disc on PostgreSQL) equal the row-by-row figures."""
    memory_gateway: MemoryGateway = request.getfixturevalue(store_fixture)

    async def test(state: GatewayState) -> None:
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.SHADOW)  # fmt: skip
        config = await config_of(state)
        await comparisons(state, config, ["match"] * 5 + ["mismatch", "noise", "compare_error"], new_run=3.0)
        await comparisons(state, config, ["mismatch"] * 2, differences=[{"path": "$.score"}], new_run=3.0)
        await comparisons(state, config, ["infra_error"] * 2, side="shadow", new_run=9.0)
        await comparisons(state, config, ["infra_error"], side="both")
        await comparisons(state, config, ["shadow_timeout"], new_run=None)
        # Late behind a busy but live worker: neither a leg, an error nor a run time on either side.
        await comparisons(state, config, ["late"] * 3, side="shadow", new_run=None, old_run=50.0)
        accepted = frozenset({signature_of("mismatch", [{"path": "$.score"}]), "0123456789abcdef"})
        async with state.sessions() as session:
            in_sql = await gates.gate_evidence(session, config, config.stage_since, accepted)
            rows = await gates.comparison_rows(session, config, config.stage_since)
        by_rows, _sides = gates.evidence_of(config, rows, accepted)
        assert in_sql == by_rows
        assert (in_sql.comparable, in_sql.new_infra_errors, in_sql.old_infra_errors) == (9, 4, 1)
        assert (in_sql.mismatches, in_sql.noise_mismatches, in_sql.accepted_mismatches) == (4, 1, 2)
        assert in_sql.new_p99_seconds == 3.0  # the failed legs' 9 s runs are not run-time evidence
        assert (in_sql.new_legs, in_sql.old_legs, in_sql.old_p99_seconds) == (13, 13, 1.0)

    memory_gateway.run(test)
