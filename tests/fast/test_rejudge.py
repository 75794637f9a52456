"""Re-judged mismatches: each engine run twice; a test that flips is noise, one that holds is a real mismatch."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway.compare.experiment import LegRun
from gateway.compare.outcomes import ComparisonOutcome
from gateway.compare.rejudge import RejudgeVerdict, rejudge
from gateway.compare.rules import Rules
from gateway.compare.step import CompareStep
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope, Stage
from gateway.jobs import cutover_changes as service
from gateway.runtime import GatewayState
from gateway.store.models import Comparison, FlakeStat, Leg
from tests.fast.conftest import MemoryGateway
from tests.fast.test_comparator import node, report
from tests.fast.test_cutover_gates import FAST
from tests.fast.test_cutover_holds import jobs

pytestmark = pytest.mark.fast

GOOD = report(node("test_add"), node("test_dice"))
DICE_LOST = report(node("test_add"), node("test_dice", "FAILED", message="assert 7 == 6"))
ADD_WRONG = report(node("test_add", "FAILED", message="assert 3 == 4"), node("test_dice"))


def run(found: dict[str, Any] | None, engine: str = "celery") -> LegRun:
    phase = "succeeded" if found is not None else "failed"
    return LegRun(engine=engine, phase=phase, outcome=phase if found else "crashed", report=copy.deepcopy(found))


DICE_DIFF = [{"path": '$.tests["test_calc.py"].tests["test_dice"].result', "test": "test_calc.py::test_dice"}]
ADD_DIFF = [{"path": '$.tests["test_calc.py"].tests["test_add"].result', "test": "test_calc.py::test_add"}]


@pytest.mark.parametrize(
    "differences,primary,shadow,primary_again,shadow_again,verdict,flipped",
    [
        # the shadow lost a dice roll; run again, it wins: the shadow engine disagreed with itself → noise
        (DICE_DIFF, GOOD, DICE_LOST, GOOD, GOOD, RejudgeVerdict.NOISE, {"test_calc.py::test_dice"}),
        # the primary's roll flips on its re-run: noise too
        (DICE_DIFF, GOOD, DICE_LOST, DICE_LOST, DICE_LOST, RejudgeVerdict.NOISE, {"test_calc.py::test_dice"}),
        # both engines agree with themselves and still differ: reproduced
        (ADD_DIFF, GOOD, ADD_WRONG, GOOD, ADD_WRONG, RejudgeVerdict.REPRODUCED, set()),
        # a flaky test flipped, but the differing test held: still a real mismatch
        (ADD_DIFF, GOOD, ADD_WRONG, DICE_LOST, ADD_WRONG, RejudgeVerdict.REPRODUCED, {"test_calc.py::test_dice"}),
        # a re-run gave no report: nothing learned, the class stays
        (ADD_DIFF, GOOD, ADD_WRONG, GOOD, None, RejudgeVerdict.INCOMPLETE, set()),
    ],
)  # fmt: skip
def test_rejudge(
    differences: list[dict[str, Any]],
    primary: dict[str, Any],
    shadow: dict[str, Any],
    primary_again: dict[str, Any],
    shadow_again: dict[str, Any] | None,
    verdict: RejudgeVerdict,
    flipped: set[str],
) -> None:
    judged = rejudge(Rules.build(), differences, run(primary, "prefect"), run(shadow), run(primary_again, "prefect"),
                     run(shadow_again))  # fmt: skip
    assert judged.verdict == verdict, judged
    assert set(judged.flipped_primary | judged.flipped_shadow) == flipped
    expected = ComparisonOutcome.NOISE if verdict == RejudgeVerdict.NOISE else ComparisonOutcome.MISMATCH
    assert judged.outcome == expected


async def finish(state: GatewayState, leg_id: str, found: dict[str, Any]) -> None:
    async with state.sessions() as session, session.begin():
        await session.execute(
            update(Leg).where(Leg.id == leg_id).values(
                finished=True, phase="succeeded", outcome="succeeded", payload=copy.deepcopy(found), compare_due=True,
                dispatch_state="sent",
            )
        )  # fmt: skip


def test_a_mismatch_is_rerun_on_both_engines_and_becomes_noise(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.SHADOW, thresholds=FAST)  # fmt: skip
        ((result_id, primary_id),) = await jobs(state, 1)
        async with state.sessions() as session:
            legs = (await session.execute(select(Leg).where(Leg.result_id == result_id))).scalars().all()
        (shadow_id,) = [leg.id for leg in legs if leg.role == "shadow"]
        await finish(state, primary_id, GOOD)
        await finish(state, shadow_id, DICE_LOST)
        step = CompareStep(state.sessions, is_postgres=False, rejudge_per_hour=5)
        assert await step() == 1
        async with state.sessions() as session:
            (comparison,) = (await session.execute(select(Comparison))).scalars().all()
            again = (await session.execute(
                select(Leg).where(Leg.result_id == result_id, Leg.routing["experiment"].as_string() == "rejudge")
            )).scalars().all()  # fmt: skip
        assert comparison.outcome == "mismatch" and comparison.rejudge["state"] == "running"
        sides = {leg.routing["rejudges"]: leg for leg in again}
        assert (sides["primary"].engine, sides["shadow"].engine) == ("prefect", "celery")
        assert all(leg.spec["params"]["test_job"]["submit"] is False for leg in again)  # fenced like a shadow
        await finish(state, sides["primary"].id, GOOD)
        await finish(state, sides["shadow"].id, GOOD)  # the shadow wins its roll this time
        assert await step() == 0  # no new comparison: the old one changed its class
        async with state.sessions() as session:
            comparison = await session.get(Comparison, comparison.id)
            flakes = {f.test_key: (f.runs, f.flips) for f in (await session.execute(select(FlakeStat))).scalars()}
        assert comparison is not None and comparison.outcome == "noise", comparison.rejudge
        assert (comparison.rejudge["verdict"], comparison.rejudge["original_outcome"]) == ("noise", "mismatch")
        assert flakes["test_calc.py::test_dice"] == (2, 1) and flakes["test_calc.py::test_add"] == (2, 0)

    memory_gateway.run(test)
