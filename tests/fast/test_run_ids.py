"""Either run id names a run (issue 16, point 3), and the task types are the platform's short names (point 4).

A Prefect leg has two ids: the gateway's (`test_system_id`, the flow run's idempotency key and name) and the
flow run's own. Here the engine's id is set apart from the leg id as Prefect's is; every route's job function
must find the run by both.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from common.legacy import ResultStatus
from gateway.engines.routing import TASK_TYPES, task_kind, task_name_of
from gateway.jobs import results, tasks
from gateway.jobs.errors import NotFound
from gateway.jobs.submit import submit_test
from gateway.runtime import GatewayState
from gateway.store.models import Leg, Result
from gateway.store.result_list import ResultFilter
from tests.fast.conftest import ADMIN, MemoryGateway, body, report

pytestmark = pytest.mark.fast


def test_task_types_are_the_short_names_and_both_forms_are_accepted() -> None:
    assert TASK_TYPES == ["student_testing", "submission_processing"]
    for short in TASK_TYPES:
        kind = task_kind(short)
        assert kind is not None and task_kind(task_name_of(kind)) == kind
        assert task_name_of(kind) == f"ctutor_backend.tasks.{short}"
    assert task_kind("no.such.task") is None


@pytest.mark.parametrize("task_name", ["student_testing", "ctutor_backend.tasks.student_testing"])
def test_submit_takes_either_task_name(memory_gateway: MemoryGateway, task_name: str) -> None:
    async def test(state: GatewayState) -> str:
        job = {"test_job": {"user_id": "u", "module": {"url": "https://git.example.invalid/a.git", "commit": "c"}}}
        task_id = await tasks.submit_task(state, task_name, job, None, None)
        leg, _ = await tasks.task_leg(state, task_id, refresh=False)
        return leg.task_name

    assert memory_gateway.run(test) == "ctutor_backend.tasks.student_testing"


def test_every_run_id_route_accepts_the_engines_id_too(memory_gateway: MemoryGateway) -> None:
    """And (25.7) the answer's `test_system_id` is the engine's run id when the engine accepted the run before
    the answer; the gateway's leg id keeps resolving everywhere."""
    engine = memory_gateway.engine
    engine.run_id_prefix = "flow-run-of-"  # the engine names its runs itself, as Prefect does

    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body("two-ids"))
        flow_run_id = row.test_system_id
        assert flow_run_id is not None and flow_run_id.startswith("flow-run-of-")
        leg_id = flow_run_id.removeprefix("flow-run-of-")
        async with state.sessions() as session:
            leg = await session.get(Leg, leg_id)
            stored = await session.get(Result, row.id)
        assert leg is not None and leg.engine_run_id == flow_run_id
        assert stored is not None and stored.test_system_id == flow_run_id  # the row says what the answer said
        for run_id in (leg_id, flow_run_id):
            assert (await results.system_status(state, ADMIN, run_id))["status"] == "SCHEDULED"
            leg, found_row = await tasks.task_leg(state, run_id, refresh=True)
            assert leg.id == leg_id and found_row is not None and found_row.id == row.id
            total, listed = await results.list_results(state, ADMIN, ResultFilter(test_system_id=run_id), 0, 10)
            assert total == 1 and listed[0].id == row.id
        with pytest.raises(NotFound):
            await tasks.task_leg(state, "neither-id", refresh=False)
        with pytest.raises(NotFound):
            await results.system_status(state, ADMIN, "neither-id")
        await tasks.cancel_task(state, flow_run_id)
        async with state.sessions() as session:
            cancelled = await session.get(Result, row.id)
        assert cancelled is not None and cancelled.status == int(ResultStatus.CANCELLED)
        assert engine.runs[leg_id].phase == "cancelled"  # the engine was asked by the leg id
        # A finished run reads the same by both ids.
        other, _ = await submit_test(state, ADMIN, body("two-ids-done"))
        assert other.test_system_id is not None
        engine.succeed(other.test_system_id.removeprefix("flow-run-of-"), report(1, 1))
        await state.reconciler.tick()
        for run_id in (other.test_system_id, other.test_system_id.removeprefix("flow-run-of-")):
            assert (await results.system_status(state, ADMIN, run_id))["status"] == "COMPLETED"

    memory_gateway.run(test)


def test_a_run_sent_after_an_outage_gets_the_engines_id_once_it_exists(memory_gateway: MemoryGateway) -> None:
    """25.7: the engine was down at the answer, so the answer had the gateway's id; the row takes the engine's
    run id when the outbox sends it, and the gateway's id (the one the client holds) keeps resolving."""
    engine = memory_gateway.engine
    engine.run_id_prefix = "flow-run-of-"

    async def test(state: GatewayState) -> None:
        engine.down = True
        row, _ = await submit_test(state, ADMIN, body("outage"))
        leg_id = row.test_system_id
        assert leg_id is not None and not leg_id.startswith("flow-run-of-")
        engine.down = False
        async with state.sessions() as session, session.begin():  # due now: the backoff is not what this tests
            await session.execute(update(Leg).where(Leg.id == leg_id).values(next_attempt_at=None))
        await state.reconciler.tick()
        async with state.sessions() as session:
            stored = await session.get(Result, row.id)
        assert stored is not None and stored.test_system_id == f"flow-run-of-{leg_id}"
        engine.succeed(leg_id, report(1, 1))
        await state.reconciler.tick()
        assert (await results.system_status(state, ADMIN, leg_id))["status"] == "COMPLETED"
        total, listed = await results.list_results(state, ADMIN, ResultFilter(test_system_id=leg_id), 0, 10)
        assert total == 1 and listed[0].id == row.id and listed[0].test_system_id == f"flow-run-of-{leg_id}"
        leg, found = await tasks.task_leg(state, leg_id, refresh=False)
        assert leg.id == leg_id and found is not None and found.id == row.id

    memory_gateway.run(test)
