"""The store's single-statement leg marks speak the legs' vocabulary (the store sits below it, so it spells it),
and a primary leg's send gives its row the engine's run id (issue 25.7) on both stores' statements."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.jobs.submit import submit_test
from gateway.legs.states import DispatchState, LegRole
from gateway.runtime import GatewayState
from gateway.store import leg_writer
from gateway.store.models import Leg, Result, utcnow
from tests.fast.conftest import ADMIN, MemoryGateway, body

pytestmark = pytest.mark.fast


def test_the_writer_spells_the_dispatch_states_as_the_machine_does() -> None:
    assert leg_writer.PENDING == DispatchState.PENDING
    assert leg_writer.SENT == DispatchState.SENT
    assert leg_writer.PRIMARY == LegRole.PRIMARY


async def _sent_with_engine_ids(state: GatewayState, engine_down: MemoryGateway) -> None:
    engine_down.engine.down = True  # the send at the request fails: the legs stay pending with the leg's id
    rows = [(await submit_test(state, ADMIN, body(f"adopt-{i}")))[0] for i in range(2)]
    engine_down.engine.down = False
    now = utcnow()
    marks = [(r.test_system_id or "", f"flow-{i}", now, now + timedelta(hours=1)) for i, r in enumerate(rows)]
    await leg_writer.record_sent_many(state.engine, marks)
    await leg_writer.record_sent_many(state.engine, [(marks[0][0], "flow-late", now, now)])  # sent already: no-op
    async with state.sessions() as session:
        for i, r in enumerate(rows):
            stored, leg = await session.get(Result, r.id), await session.get(Leg, r.test_system_id)
            assert stored is not None and stored.test_system_id == f"flow-{i}"
            assert leg is not None and (leg.engine_run_id, leg.dispatch_state) == (f"flow-{i}", DispatchState.SENT)


def test_a_sent_primary_gives_its_row_the_engines_run_id_sqlite(memory_gateway: MemoryGateway) -> None:
    memory_gateway.run(lambda state: _sent_with_engine_ids(state, memory_gateway))


@pytest.mark.postgres
def test_a_sent_primary_gives_its_row_the_engines_run_id_postgres(memory_gateway_pg: MemoryGateway) -> None:
    memory_gateway_pg.run(lambda state: _sent_with_engine_ids(state, memory_gateway_pg))
