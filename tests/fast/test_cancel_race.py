"""A cancel racing status reads: the row always ends CANCELLED, on both stores (issue 16, point 1).

The engine's cancel only asks (as a Celery revoke or a Prefect CANCELLING proposal does), so a status read that
polls between the engine call and the cancel's own write sees CANCELLING. Before the fix, a refresh that had
loaded the row before the cancel committed wrote that CANCELLING (8) over the cancel's CANCELLED (2) on SQLite,
and nothing ever repaired it. Each round here races one cancel with several reads of both kinds; the event loop
and the thread pool give different interleavings round after round, and every one must end final.
"""

from __future__ import annotations

import asyncio

import pytest

from common.legacy import ResultStatus
from gateway.jobs import results, tasks
from gateway.jobs.submit import submit_test
from gateway.legs.states import LegOutcome
from gateway.runtime import GatewayState
from gateway.store.models import Leg, Result
from tests.fast.conftest import ADMIN, MemoryGateway, body

pytestmark = pytest.mark.fast

ROUNDS = 60
READERS = 4


async def race_cancel_with_status_reads(
    state: GatewayState, gateway: MemoryGateway, commit: str, started: bool
) -> tuple[Leg, Result]:
    """Submit, maybe start, then one cancel and READERS status readers at once; the leg and row afterwards."""
    row, _ = await submit_test(state, ADMIN, body(commit))
    leg_id = row.test_system_id
    assert leg_id is not None
    if started:
        gateway.engine.start(leg_id)

    async def read_status() -> None:
        for _ in range(3):
            await results.system_status(state, ADMIN, leg_id)
            await tasks.task_leg(state, leg_id, refresh=True)

    await asyncio.gather(tasks.cancel_task(state, leg_id), *(read_status() for _ in range(READERS)))
    async with state.sessions() as session:
        leg = await session.get(Leg, leg_id)
        stored = await session.get(Result, row.id)
    assert leg is not None and stored is not None
    return leg, stored


def run_rounds(gateway: MemoryGateway) -> None:
    gateway.engine.slow_cancel = True

    async def test(state: GatewayState) -> None:
        seen: list[tuple[int, str | None, bool]] = []
        for i in range(ROUNDS):
            leg, stored = await race_cancel_with_status_reads(state, gateway, f"cancel-race-{i}", started=i % 2 == 1)
            seen.append((stored.status, leg.outcome, leg.finished))
        wrong = [(i, s) for i, s in enumerate(seen) if s != (int(ResultStatus.CANCELLED), LegOutcome.CANCELLED, True)]
        assert not wrong, f"{len(wrong)} of {ROUNDS} rounds did not end cancelled: {wrong[:5]}"

    gateway.run(test)


def test_a_cancel_racing_status_reads_always_ends_cancelled_on_sqlite(memory_gateway: MemoryGateway) -> None:
    run_rounds(memory_gateway)


def test_a_cancel_racing_status_reads_always_ends_cancelled_on_postgres(memory_gateway_pg: MemoryGateway) -> None:
    run_rounds(memory_gateway_pg)
