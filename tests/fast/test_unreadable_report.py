"""An infrastructure failure is never a grade: a finished run whose report cannot be read is re-run, then FAILED.

Every path on which a missing or unreadable report could become a number, against the in-memory engine:
- the Prefect shape: the engine says the run succeeded, the adapter could not read its persisted report
  (`ResultUnavailable`);
- the Celery shapes: a SUCCESS whose result is not a report (undecodable: `UndecodableResult`, FAILED phase), or
  a SUCCESS that carries no report object at all;
- a result gone between the state and the read (the state says SUCCEEDED, the result store has nothing);
- the legs machine itself: `finish` with SUCCEEDED and no report writes no score.
Each is re-run within `gateway_infra_retries` (the engine runs it again), and when the budget is spent the row is
FAILED with the vocabulary's message, never COMPLETED with 0.0. The real-engine test is in tests/faults/.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from backends.interface import LegPhase, LegResult
from backends.memory.adapter import MemoryEngine
from common.failures import InfraMessage
from common.legacy import ResultStatus
from gateway.jobs.submit import submit_test
from gateway.legs import machine
from gateway.legs.states import LegOutcome
from gateway.runtime import GatewayState
from gateway.store.models import Leg, Result
from tests.fast.conftest import ADMIN, MemoryGateway, body, leg_and_row, report

pytestmark = pytest.mark.fast

Break = Callable[[MemoryEngine, str], None]
BREAKS: dict[str, Break] = {
    "prefect result unreadable": lambda e, leg: e.succeed_unreadable(
        leg, "the persisted result abc.json is not in /data/prefect-results", "ResultUnavailable"
    ),
    "celery result undecodable": lambda e, leg: e.fail(leg, "the stored result is not JSON", "UndecodableResult"),
    "succeeded without a report": lambda e, leg: e.succeed_unreadable(leg),
    "result gone after the state": lambda e, leg: (e.succeed(leg, report(3, 3)), e.forget_result(leg)),  # type: ignore[func-returns-value]
}


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_an_unreadable_report_is_run_again_and_then_graded(memory_gateway: MemoryGateway, how: str) -> None:
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body(f"unreadable-{how.replace(' ', '-')}"))
        leg_id = row.test_system_id
        assert leg_id is not None
        engine.start(leg_id)
        BREAKS[how](engine, leg_id)
        await state.reconciler.tick()
        leg, stored = await leg_and_row(state, leg_id, row.id)
        # Not a grade: back in the outbox, the row waiting again, the reason on the leg.
        assert not leg.finished and leg.infra_retries == 1, (leg.phase, leg.outcome, leg.last_error)
        assert stored.status == int(ResultStatus.SCHEDULED)
        await state.reconciler.tick()  # the retry is due now: the engine runs it again
        assert engine.calls["rerun"] == 1 and engine.runs[leg_id].submits == 2
        engine.start(leg_id)
        engine.succeed(leg_id, report(2, 3))
        await state.reconciler.tick()
        leg, stored = await leg_and_row(state, leg_id, row.id)
        assert leg.outcome == LegOutcome.SUCCEEDED
        assert (stored.status, stored.result) == (int(ResultStatus.COMPLETED), pytest.approx(2 / 3))

    memory_gateway.run(test)


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_when_the_budget_is_spent_the_row_is_failed_not_scored(memory_gateway: MemoryGateway, how: str) -> None:
    engine = memory_gateway.engine
    budget = memory_gateway.settings.gateway_infra_retries

    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body(f"spent-{how.replace(' ', '-')}"))
        leg_id = row.test_system_id
        assert leg_id is not None
        for _attempt in range(budget + 1):
            engine.start(leg_id)
            BREAKS[how](engine, leg_id)
            await state.reconciler.tick()  # retried (and re-sent by the next tick) or finished
            await state.reconciler.tick()
        leg, stored = await leg_and_row(state, leg_id, row.id)
        assert engine.calls["rerun"] == budget and leg.infra_retries == budget
        assert leg.finished and leg.outcome == LegOutcome.CRASHED
        assert stored.status == int(ResultStatus.FAILED)  # never COMPLETED with a 0.0
        assert stored.result_json is not None
        assert stored.result_json["message"] == InfraMessage.RESULT_UNREADABLE.value

    memory_gateway.run(test)


def test_the_machine_never_writes_a_score_for_a_success_without_a_report() -> None:
    """Whoever calls `finish` with SUCCEEDED and no report object: the row is FAILED with the vocabulary's message."""
    from datetime import UTC, datetime

    leg = Leg(id="leg-1", engine="prefect", role="primary", phase=LegPhase.RUNNING.value, finished=False)
    row = Result(id="row-1", status=int(ResultStatus.RUNNING), result=0.0)
    now = datetime.now(UTC)
    result = LegResult(leg_id="leg-1", phase=LegPhase.SUCCEEDED)
    machine.finish(leg, row, now, LegPhase.SUCCEEDED, result, hooks=machine.FinishHooks())
    assert row.status == int(ResultStatus.FAILED) and leg.outcome == LegOutcome.CRASHED
    assert row.result_json is not None and row.result_json["message"] == InfraMessage.RESULT_UNREADABLE.value
    assert leg.payload == row.result_json
