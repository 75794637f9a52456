"""The `verified` answer policy in canary: the row waits for both engines; where they disagree the old engine's
grade is written, and where the old engine gives no verdict the new engine's is written, marked unverified."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from sqlalchemy import select, update

from backends.interface import LegPhase, LegResult
from gateway.compare.answer import verified_answer
from gateway.compare.outcomes import ComparisonOutcome, Side
from gateway.compare.step import CompareStep
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope, Stage
from gateway.jobs import cutover_changes as service
from gateway.legs.machine import FinishHooks, finish
from gateway.runtime import GatewayState
from gateway.store.models import Comparison, Leg, Result, utcnow
from tests.fast.conftest import MemoryGateway
from tests.fast.test_comparator import node, report
from tests.fast.test_cutover_gates import FAST
from tests.fast.test_cutover_holds import jobs

pytestmark = pytest.mark.fast

FULL = report(node("test_add"), node("test_slow"))
HALF = report(node("test_add"), node("test_slow", "FAILED", status="TIMEDOUT", message="time limit of 4s exceeded"))


@pytest.mark.parametrize(
    "outcome,side,source,verified",
    [
        (ComparisonOutcome.MATCH, None, Side.PRIMARY, True),
        (ComparisonOutcome.NOISE, None, Side.PRIMARY, True),
        (ComparisonOutcome.MISMATCH, None, Side.SHADOW, True),  # the control's answer
        (ComparisonOutcome.INFRA_ERROR, Side.PRIMARY, Side.SHADOW, True),  # the new engine failed
        (ComparisonOutcome.INFRA_ERROR, Side.SHADOW, Side.PRIMARY, False),
        (ComparisonOutcome.SHADOW_TIMEOUT, None, Side.PRIMARY, False),
        (ComparisonOutcome.COMPARE_ERROR, None, Side.PRIMARY, False),
    ],
)
def test_which_answer_is_written(outcome: ComparisonOutcome, side: Side | None, source: Side, verified: bool) -> None:
    answer = verified_answer(outcome, side)
    assert (answer.source, answer.verified) == (source, verified)


async def canary_job(state: GatewayState, answer_policy: str) -> tuple[str, str, str]:
    await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                   new_engine="celery", stage=Stage.CANARY, percentage=100, thresholds=FAST,
                                   answer_policy=answer_policy)  # fmt: skip
    ((result_id, primary_id),) = await jobs(state, 1)
    async with state.sessions() as session:
        legs = (await session.execute(select(Leg).where(Leg.result_id == result_id))).scalars().all()
    (shadow,) = [leg for leg in legs if leg.role == "shadow"]
    return result_id, primary_id, shadow.id


async def finish_primary(state: GatewayState, result_id: str, leg_id: str, found: dict[str, Any]) -> Result:
    async with state.sessions() as session, session.begin():
        leg = await session.get(Leg, leg_id)
        row = await session.get(Result, result_id)
        assert leg is not None and row is not None
        result = LegResult(leg_id, LegPhase.SUCCEEDED, copy.deepcopy(found))
        finish(leg, row, utcnow(), LegPhase.SUCCEEDED, result, hooks=FinishHooks())
        return row


async def finish_shadow(state: GatewayState, leg_id: str, found: dict[str, Any]) -> None:
    async with state.sessions() as session, session.begin():
        await session.execute(update(Leg).where(Leg.id == leg_id).values(
            finished=True, phase="succeeded", outcome="succeeded", payload=copy.deepcopy(found), compare_due=True,
            dispatch_state="sent"))  # fmt: skip


@pytest.mark.parametrize(
    "new,old,policy,written,verified_from",
    [
        (HALF, FULL, "verified", 1.0, "shadow"),  # the new engine's lower limit: the student gets the old grade
        (FULL, FULL, "verified", 1.0, "primary"),
        (HALF, FULL, "primary", 0.5, None),  # today's behaviour, on request: the answering engine's at once
    ],
)
def test_a_verified_canary_writes_the_old_engines_grade_where_they_disagree(
    memory_gateway: MemoryGateway,
    new: dict[str, Any],
    old: dict[str, Any],
    policy: str,
    written: float,
    verified_from: str | None,
) -> None:
    async def test(state: GatewayState) -> None:
        result_id, primary_id, shadow_id = await canary_job(state, policy)
        async with state.sessions() as session:
            primary = await session.get(Leg, primary_id)
        assert primary is not None and primary.engine == "celery"
        assert (primary.routing["shadow"].get("verify") == shadow_id) == (policy == "verified")
        row = await finish_primary(state, result_id, primary_id, new)
        if policy == "verified":
            assert row.status not in (0, 1)  # waiting for the old engine's verdict
        else:
            assert (row.status, row.result) == (0, written)
        await finish_shadow(state, shadow_id, old)
        assert await CompareStep(state.sessions, is_postgres=False)() == 1
        async with state.sessions() as session:
            row = await session.get(Result, result_id)
            primary = await session.get(Leg, primary_id)
            (comparison,) = (await session.execute(select(Comparison))).scalars().all()
        assert row is not None and primary is not None
        assert (row.status, row.result) == (0, written)
        assert comparison.outcome == ("match" if new is old else "mismatch")  # the disagreement is evidence
        if verified_from:
            assert primary.routing["answered"]["written_from"] == verified_from
            assert primary.routing["answered"]["verified"] is True

    memory_gateway.run(test)
