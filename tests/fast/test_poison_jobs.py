"""Poison jobs (issue 11.5 = 12.9): refused up front with a clear 400; a leg that cannot be dispatched for a
reason that is not an outage is rejected after a bounded number of tries, with the reason on the leg."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, update

from backends.interface import TaskKind
from common.legacy import ResultStatus
from gateway.jobs.errors import BadJobRequest
from gateway.jobs.submit import submit_test
from gateway.jobs.tasks import submit_task
from gateway.legs import machine
from gateway.legs.states import DispatchState, LegOutcome, LegRole
from gateway.runtime import GatewayState
from gateway.store.models import Leg, Result, new_id, utcnow
from tests.fast.conftest import ADMIN, MemoryGateway, body

pytestmark = pytest.mark.fast

JOB = {"module": {"url": "https://git.example.invalid/s/repo.git", "commit": "abc", "path": "week1/ex1"}}
REFUSED = [
    ("student_testing", {}, "needs the parameter 'test_job'"),
    ("ctutor_backend.tasks.student_testing", {"test_job": "x"}, "needs the parameter 'test_job'"),
    ("student_testing", {"test_job": {"user_id": "u"}}, "test_job.module: Field required"),
    ("submission_processing", {}, "needs the parameter 'submission'"),
    ("submission_processing", {"submission": {}}, "needs the parameter 'submission.test_job'"),
    ("submission_processing", {"submission": {"test_job": {"module": {}}}}, "submission.test_job.module.url"),
]


async def leg_count(state: GatewayState) -> int:
    async with state.sessions() as session:
        return int(await session.scalar(select(func.count(Leg.id))) or 0)


@pytest.mark.parametrize(("task", "parameters", "message"), REFUSED)
def test_a_task_without_its_parameters_is_refused_and_nothing_is_queued(
    memory_gateway: MemoryGateway, task: str, parameters: dict[str, Any], message: str
) -> None:
    async def test(state: GatewayState) -> None:
        with pytest.raises(BadJobRequest) as refused:
            await submit_task(state, task, parameters, 0, None)
        assert message in refused.value.detail
        assert await leg_count(state) == 0 and memory_gateway.engine.calls["submit"] == 0

    memory_gateway.run(test)


@pytest.mark.parametrize("params", [{"test_job": JOB}, {"submission": {"test_job": JOB}}])
def test_a_task_with_its_parameters_is_queued(memory_gateway: MemoryGateway, params: dict[str, Any]) -> None:
    task = "student_testing" if "test_job" in params else "submission_processing"

    async def test(state: GatewayState) -> None:
        task_id = await submit_task(state, task, params, 0, None)
        assert task_id in memory_gateway.engine.runs

    memory_gateway.run(test)


def test_a_leg_that_keeps_failing_to_dispatch_is_rejected_after_a_bound(memory_gateway: MemoryGateway) -> None:
    """A leg queued without its parameter (as an older gateway could) next to a healthy one on the same engine."""
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body("poisoned"))
        now = utcnow()
        poison = machine.new_leg(
            leg_id=new_id(), result_id=row.id, role=LegRole.PRIMARY, engine="celery",
            task_name="ctutor_backend.tasks.student_testing",
            spec={"kind": TaskKind.STUDENT_TESTING.value, "params": {}, "properties": {}, "priority": 8},
            routing=None, now=now, due_at=now,
        )  # fmt: skip
        async with state.sessions() as session, session.begin():
            # The row's own leg gives way to the poisoned one (as if the row had been written with it).
            await session.execute(update(Leg).where(Leg.id == row.test_system_id).values(finished=True))
            session.add(Leg(**poison))
            await session.execute(update(Result).where(Result.id == row.id).values(test_system_id=poison["id"]))
        healthy, _ = await submit_test(state, ADMIN, body("healthy"))
        async with state.sessions() as session, session.begin():  # the healthy one waits in the outbox too
            await session.execute(
                update(Leg).where(Leg.id == healthy.test_system_id).values(dispatch_state=DispatchState.PENDING)
            )
        engine.runs.clear()
        for attempt in range(1, machine.DISPATCH_FAULT_LIMIT + 1):
            async with state.sessions() as session, session.begin():  # due now, not after the backoff
                await session.execute(update(Leg).where(Leg.finished.is_(False)).values(next_attempt_at=utcnow()))
            await state.reconciler.tick()
            async with state.sessions() as session:
                leg = await session.get(Leg, poison["id"])
            assert leg is not None and leg.dispatch_faults == attempt
            assert healthy.test_system_id in engine.runs  # one job's fault never holds back the others
        assert leg.finished and leg.dispatch_state == DispatchState.FAILED and leg.outcome == LegOutcome.REJECTED
        # The reason is on the leg (`last_error`, and under `details`); its error is the stable vocabulary's.
        assert leg.last_error is not None and "KeyError" in leg.last_error and "giving up" in leg.last_error
        assert leg.error == "The execution engine refused the job."
        async with state.sessions() as session:
            stored = await session.get(Result, row.id)
        assert stored is not None and stored.status == int(ResultStatus.FAILED)
        assert stored.result_json is not None and "KeyError" in stored.result_json["details"]

    memory_gateway.run(test)


def test_an_outage_is_never_counted_as_a_fault(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        engine.down = True
        row, _ = await submit_test(state, ADMIN, body("outage"))
        for _ in range(machine.DISPATCH_FAULT_LIMIT + 2):
            async with state.sessions() as session, session.begin():
                await session.execute(update(Leg).values(next_attempt_at=utcnow()))
            await state.reconciler.tick()
        async with state.sessions() as session:
            leg = await session.get(Leg, row.test_system_id)
        assert leg is not None and not leg.finished and leg.dispatch_faults == 0
        assert leg.dispatch_attempts == machine.DISPATCH_FAULT_LIMIT + 3

    memory_gateway.run(test)
