"""Submission processing (`submit=true`): one rule whoever closes the run, started once per row (engine-free).

Issue 12 points 1-3: "test, then submit the same commit" starts submission once and answers the same run id;
a run closed by a legacy write-back starts it like a reconciler-closed run; `PATCH {"submit": true}` is applied.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from common.legacy import ResultStatus
from gateway.jobs.errors import BadJobRequest
from gateway.jobs.results import write_back
from gateway.jobs.submit import submit_test
from gateway.legs.states import LegOutcome, LegRole
from gateway.runtime import GatewayState
from gateway.store.accounts import Principal
from gateway.store.models import CourseContent, Leg, Result
from tests.fast.conftest import ADMIN, MemoryGateway, body, report

pytestmark = pytest.mark.fast

WORKER = Principal("u-worker", "worker", "worker")


async def submission_legs(state: GatewayState, row_id: str) -> list[Leg]:
    async with state.sessions() as session:
        stmt = select(Leg).where(Leg.result_id == row_id, Leg.role == LegRole.SUBMISSION)
        return list((await session.execute(stmt)).scalars())


async def row_of(state: GatewayState, row_id: str) -> Result:
    async with state.sessions() as session:
        row = await session.get(Result, row_id)
    assert row is not None
    return row


def test_a_completed_commit_submitted_again_starts_submission_once(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        tested, _ = await submit_test(state, ADMIN, body("c1"))
        engine.succeed(tested.test_system_id, report(3, 3))
        await state.reconciler.tick()
        assert (await row_of(state, tested.id)).status == int(ResultStatus.COMPLETED)
        assert await submission_legs(state, tested.id) == []  # tested only: nothing submitted
        first, new = await submit_test(state, ADMIN, body("c1", submit=True))
        second, _ = await submit_test(state, ADMIN, body("c1", submit=True))
        legs = await submission_legs(state, tested.id)
        assert not new and first.id == second.id == tested.id and first.submit and second.submit
        assert len(legs) == 1 and legs[0].spec["params"]["submission"]["result_id"] == tested.id

    memory_gateway.run(test)


def test_submit_true_on_a_run_in_flight_submits_when_it_completes(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        tested, _ = await submit_test(state, ADMIN, body("c2"))
        again, _ = await submit_test(state, ADMIN, body("c2", submit=True))
        assert again.submit and await submission_legs(state, tested.id) == []  # not before a verdict
        engine.succeed(tested.test_system_id, report(1, 2))
        await state.reconciler.tick()
        assert len(await submission_legs(state, tested.id)) == 1

    memory_gateway.run(test)


@pytest.mark.parametrize(("status", "submitted"), [(0, True), (1, False), (6, False)])
def test_a_legacy_write_back_closes_the_run_under_the_same_rule(
    memory_gateway: MemoryGateway, status: int, submitted: bool
) -> None:
    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body(f"wb{status}", submit=True))
        await write_back(state, WORKER, row.id, {"status": 5})
        assert await submission_legs(state, row.id) == []
        await write_back(state, WORKER, row.id, {"status": status, "result": 0.5, "result_json": report(1, 2)})
        async with state.sessions() as session:
            leg = await session.get(Leg, row.test_system_id)
        assert leg is not None and leg.finished and leg.outcome.endswith("(write-back)")
        assert len(await submission_legs(state, row.id)) == (1 if submitted else 0)
        # The reconciler seeing the engine's own end later changes nothing (the leg is closed once).
        await state.reconciler.tick()
        assert len(await submission_legs(state, row.id)) == (1 if submitted else 0)
        assert leg.outcome in {o.value for o in LegOutcome}

    memory_gateway.run(test)


def test_patch_submit_true_is_applied_and_starts_nothing(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body("p1"))
        await write_back(state, WORKER, row.id, {"status": 0, "result": 1.0, "result_json": report(2, 2)})
        assert (await row_of(state, row.id)).submit is False
        answered = await write_back(state, WORKER, row.id, {"submit": True})
        stored = await row_of(state, row.id)
        assert answered.submit and stored.submit and stored.status == int(ResultStatus.COMPLETED)
        assert await submission_legs(state, row.id) == []  # the worker made its merge request itself

    memory_gateway.run(test)


def test_the_submission_limit_comes_before_the_existing_run(memory_gateway: MemoryGateway) -> None:
    """25.8: the contract checks `max_submissions` before it looks for a run of the same commit, so asking again
    for a run that already counts is refused once the limit is reached (and starts nothing more)."""
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        async with state.sessions() as session, session.begin():
            await session.execute(update(CourseContent).values(max_submissions=1))
        state.catalog.clear()
        row, _ = await submit_test(state, ADMIN, body("m1"))
        engine.succeed(row.test_system_id, report(2, 2))
        await state.reconciler.tick()
        again, new = await submit_test(state, ADMIN, body("m1", submit=True))  # test, then submit: counts now
        assert (again.id, new) == (row.id, False)
        for commit in ("m1", "m2"):  # the same run asked again, and a new commit: both over the limit
            with pytest.raises(BadJobRequest, match="Reached max submissions"):
                await submit_test(state, ADMIN, body(commit, submit=True))
        assert len(await submission_legs(state, row.id)) == 1

    memory_gateway.run(test)
