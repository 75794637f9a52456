"""Infrastructure failures the student did not cause are run again (a small budget), and health never piles up.

Against the in-memory engine: a crashed run and a run whose worker died go back through the outbox under the same
leg id (`rerun`), counted on the leg; when the budget is spent the row shows the infrastructure error; a failure
of the student's own making is never retried. The real-engine tests of the same behaviour are in
tests/faults/.
"""

from __future__ import annotations

import asyncio

import pytest

from backends.interface import Health, LegPhase
from common.legacy import ResultStatus
from gateway.engines.health import HealthMonitor
from gateway.jobs.submit import submit_test
from gateway.legs.states import DispatchState, LegOutcome
from gateway.runtime import GatewayState
from tests.fast.conftest import ADMIN, MemoryGateway, body, leg_and_row, report

pytestmark = pytest.mark.fast


async def flush_retry(state: GatewayState, leg_id: str) -> None:
    """The retried leg is due at once: the next tick sends it again (a rerun at the engine)."""
    await state.reconciler.tick()


@pytest.mark.parametrize(
    ("break_it", "retried"),
    [
        ("crash", True),  # Prefect's CRASHED: the infrastructure broke under the run
        ("die", True),  # the worker running it is gone: the engine says `lost`
        ("fail", False),  # a FAILURE the work reported (e.g. the clone of a wrong commit): not retried
    ],
)
def test_an_infrastructure_failure_runs_again_under_the_same_leg(
    memory_gateway: MemoryGateway, break_it: str, retried: bool
) -> None:
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body("infra1"))
        leg_id = row.test_system_id
        assert leg_id is not None
        engine.start(leg_id)
        getattr(engine, break_it)(leg_id, "broken under the run")
        await state.reconciler.tick()
        leg, stored = await leg_and_row(state, leg_id, row.id)
        if not retried:
            assert leg.finished and stored.status == int(ResultStatus.FAILED) and leg.infra_retries == 0
            assert engine.calls["rerun"] == 0
            return
        # Back in the outbox, the row waiting again (not FAILED), the attempt and its reason on the leg.
        assert not leg.finished and leg.infra_retries == 1 and "broken under the run" in (leg.last_error or "")
        assert stored.status == int(ResultStatus.SCHEDULED)
        await flush_retry(state, leg_id)
        assert engine.calls["rerun"] == 1 and engine.runs[leg_id].submits == 2
        leg, _ = await leg_and_row(state, leg_id, row.id)
        assert leg.dispatch_state == DispatchState.SENT and leg.phase == LegPhase.QUEUED
        engine.succeed(leg_id, report(3, 3))
        await state.reconciler.tick()
        leg, stored = await leg_and_row(state, leg_id, row.id)
        assert leg.outcome == LegOutcome.SUCCEEDED and (stored.status, stored.result) == (0, 1.0)

    memory_gateway.run(test)


def test_when_the_budget_is_spent_the_row_shows_the_infrastructure_error(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine
    budget = memory_gateway.settings.gateway_infra_retries

    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body("infra2"))
        leg_id = row.test_system_id
        assert leg_id is not None
        for attempt in range(budget + 1):
            engine.start(leg_id)
            engine.crash(leg_id, f"crash {attempt}")
            await state.reconciler.tick()  # retried (and re-sent by the next tick) or finished
            await flush_retry(state, leg_id)
        leg, stored = await leg_and_row(state, leg_id, row.id)
        assert engine.calls["rerun"] == budget and leg.infra_retries == budget
        assert leg.finished and leg.outcome == LegOutcome.CRASHED
        assert stored.status == int(ResultStatus.FAILED)
        assert stored.result_json is not None and stored.result_json["details"] == f"crash {budget}"

    memory_gateway.run(test)


class _SlowHealth:
    """An adapter whose health blocks until released, counting its calls (the Celery broadcast that hung)."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def health(self) -> Health:
        self.calls += 1
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.release.wait(), self.loop).result(timeout=30)
        return Health(healthy=True, engine="celery", workers=1)


class _OneAdapter:
    def __init__(self, adapter: _SlowHealth) -> None:
        self._adapter = adapter

    def adapter(self, _engine: str) -> _SlowHealth:
        return self._adapter


def test_a_health_flood_costs_one_probe_and_every_caller_gets_an_answer_in_time() -> None:
    async def main() -> None:
        slow = _SlowHealth()
        slow.loop = asyncio.get_running_loop()
        monitor = HealthMonitor(_OneAdapter(slow), ttl=60.0, timeout=0.2)  # type: ignore[arg-type]
        try:
            answers = await asyncio.gather(*(monitor.check("celery") for _ in range(50)))
            # The probe hangs: every caller still gets its answer (unhealthy, in time), and only one probe ran.
            assert {a.healthy for a in answers} == {False} and slow.calls == 1
            slow.release.set()
            await asyncio.gather(*(monitor.check("celery") for _ in range(5)))
            fresh = await monitor.check("celery")
            assert fresh.healthy and slow.calls == 1  # the one probe filled the cache for everyone after it
        finally:
            monitor.close()

    asyncio.run(main())


@pytest.mark.parametrize("error_type", ["UndecodableResult", "BadResult"])
def test_a_result_the_gateway_cannot_read_is_run_again_never_graded(
    memory_gateway: MemoryGateway, error_type: str
) -> None:
    """25.4: a worker that is not the gateway's answered (pickled, or the platform's own shape): an infrastructure
    failure, run again within the budget; the rerun's own report is the grade."""
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body("foreign1"))
        leg_id = row.test_system_id
        assert leg_id is not None
        engine.fail(leg_id, "a worker that is not the gateway's answered", error_type=error_type)
        await state.reconciler.tick()
        leg, stored = await leg_and_row(state, leg_id, row.id)
        assert (leg.finished, leg.infra_retries, stored.status) == (False, 1, int(ResultStatus.SCHEDULED))
        await flush_retry(state, leg_id)
        assert engine.runs[leg_id].submits >= 2  # sent again under the same leg id
        engine.succeed(leg_id, report(1, 2))
        await state.reconciler.tick()
        _leg, graded = await leg_and_row(state, leg_id, row.id)
        assert (graded.status, graded.result) == (int(ResultStatus.COMPLETED), 0.5)

    memory_gateway.run(test)
