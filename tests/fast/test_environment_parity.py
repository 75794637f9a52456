"""Environment parity: the legs' environments diffed, named in words, and a required difference fails the gate."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.compare.environment import comparison_environment, describe, differences
from gateway.compare.step import routed_by_record
from gateway.cutover.gates import Criterion, Evidence, Verdict, evaluate
from gateway.cutover.stage_machine import Action, InvalidChange, plan_change
from gateway.cutover.stages import CutoverConfig, GateThresholds, Scope, Stage
from gateway.jobs import cutover_changes as service
from gateway.jobs import cutover_gates as gates
from gateway.jobs.scorecard import scorecard
from gateway.runtime import GatewayState
from gateway.store.models import Comparison, Leg, new_id, utcnow
from tests.fast.conftest import MemoryGateway
from tests.fast.test_cutover_gates import FAST, config_of
from tests.fast.test_cutover_holds import jobs

pytestmark = pytest.mark.fast


def env(time: float = 10.0, memory: int = 1024, process: str = "warm", **extra: Any) -> dict[str, Any]:
    limits = {"time_seconds": time, "cpu_seconds": 60, "memory_mb": memory, "processes": 256, "file_mb": 64}
    return {"python": "3.11.9", "runner": "pytest", "pytest": "8.3.4", "distributions": "0123456789ab",
            "isolation": "bwrap", "process": process, "limits": limits, **extra}  # fmt: skip


def test_the_differences_are_named_in_words() -> None:
    found = [d.as_json() for d in differences(env(time=4), env(time=10.0, memory=256))]
    assert [d["field"] for d in found] == ["limits.memory_mb", "limits.time_seconds"]
    assert describe(found, "celery", "prefect") == (
        "celery: memory limit 1024 MB, prefect: 256 MB; celery: time limit 4 s, prefect: 10 s"
    )
    # A field only one side reports is not a difference (a foreign deployment reporting less).
    assert differences({"python": "3.11.9"}, {"python": "3.11.9", "pytest": "8"}) == []
    assert comparison_environment({"environment": env()}, None) == {"primary": env(), "shadow": {}, "differences": []}
    assert comparison_environment({}, {"tests": []}) is None


@pytest.mark.parametrize(
    "breaks,verdict,decided_by",
    [
        (0, Verdict.SUCCESSFUL, Criterion.ALL),
        (1, Verdict.FAILED, Criterion.PARITY),  # the first comparison showing it is enough
    ],
)
def test_a_required_difference_fails_the_gate_at_once(breaks: int, verdict: Verdict, decided_by: Criterion) -> None:
    evidence = Evidence(comparable=400, new_legs=400, old_p99_seconds=1.0, new_p99_seconds=1.0,
                        parity_breaks=breaks, parity_example="celery: time limit 4 s, prefect: 10 s")  # fmt: skip
    result = evaluate(evidence, GateThresholds())
    assert (result.verdict, result.decided_by) == (verdict, decided_by)
    if breaks:
        assert result.needs[0] == "environments differ on 1 comparison: celery: time limit 4 s, prefect: 10 s"
        # even with nothing else to judge yet
        early = evaluate(Evidence(comparable=1, new_legs=1, parity_breaks=1, parity_example="x"), GateThresholds())
        assert early.verdict == Verdict.FAILED


def test_parity_fields_are_validated() -> None:
    config = CutoverConfig(Scope.CONTENT, "cc", "prefect", "celery", version=1)
    with pytest.raises(InvalidChange, match="parity fields unknown: limits.bogus"):
        plan_change(config, Action.CONFIGURE, utcnow(), thresholds={"parity": ["limits.bogus"]})
    change = plan_change(config, Action.CONFIGURE, utcnow(), thresholds={"parity": ["limits.time_seconds"]})
    assert change.after.thresholds.parity == ("limits.time_seconds",)


async def compared_with(state: GatewayState, config: CutoverConfig, old: dict[str, Any], new: dict[str, Any]) -> None:
    (result_id, leg_id), *_ = await jobs(state, 1)
    environment = comparison_environment({"environment": old}, {"environment": new})
    assert environment is not None
    async with state.sessions() as session, session.begin():
        leg = await session.get(Leg, leg_id)
        assert leg is not None
        session.add(
            Comparison(
                id=new_id(), result_id=result_id, primary_leg_id=leg_id, shadow_leg_id=new_id(), kind="shadow",
                **routed_by_record(leg.routing),
                course_content_id="cc-prefect", primary_engine=config.old_engine, shadow_engine=config.new_engine,
                outcome="match", primary_run_seconds=1.0, shadow_run_seconds=1.0, environment=environment,
                environment_differs=bool(environment["differences"]), created_at=utcnow(),
            )
        )  # fmt: skip


def test_the_first_comparison_with_another_time_limit_fails_the_gate(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.SHADOW, thresholds=FAST)  # fmt: skip
        config = await config_of(state)
        for _ in range(4):  # the run process differs (warm vs cold): shown, not required
            await compared_with(state, config, env(process="cold"), env())
        run = await gates.evaluate_one(state.sessions, config, dry_run=True)
        assert run.evaluation.verdict == Verdict.SUCCESSFUL, run.evaluation.needs
        await compared_with(state, config, env(time=10), env(time=4))
        run = await gates.evaluate_one(state.sessions, config, dry_run=True)
        assert (run.evaluation.verdict, run.evaluation.decided_by) == (Verdict.FAILED, Criterion.PARITY)
        assert "prefect: time limit 10 s, celery: 4 s" in run.evaluation.needs[0]
        (card,) = await scorecard(state.sessions)
        assert card["evaluation"]["decided_by"] == "environment_parity"
        assert card["environment"]["text"] == "prefect: time limit 10 s, celery: 4 s"
        assert card["environment"]["engines"]["celery"]["limits"]["time_seconds"] == 4

    memory_gateway.run(test)
