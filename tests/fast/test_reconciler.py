"""The reconciler against the in-memory engine: every open leg per cycle, outages, deadlines, two reconcilers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from backends.interface import LegPhase
from common.legacy import ResultStatus
from gateway.engines.reconciler import Reconciler
from gateway.jobs.bootstrap import start_gateway
from gateway.jobs.submit import submit_test
from gateway.legs import machine
from gateway.legs.states import DispatchState, LegOutcome
from gateway.runtime import GatewayState
from gateway.store.models import Leg, Result, utcnow
from tests.fast.conftest import ADMIN, MemoryGateway, body, report

pytestmark = pytest.mark.fast


async def submit_many(state: GatewayState, count: int, prefix: str = "c") -> list[Result]:
    return [(await submit_test(state, ADMIN, body(f"{prefix}{i}")))[0] for i in range(count)]


async def rows_by_id(state: GatewayState) -> dict[str, Result]:
    async with state.sessions() as session:
        return {row.id: row for row in (await session.execute(select(Result))).scalars()}


def test_every_open_leg_is_seen_in_one_cycle_however_many_never_change(memory_gateway: MemoryGateway) -> None:
    """500 in flight, 300 that never change: the 200 that finished are final after one tick, no client read."""
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        state.reconciler.batch_size = 100  # five batches: the unchanged ones must not hide the rest
        rows = await submit_many(state, 500)
        finishing = rows[300:]
        for row in finishing:
            engine.succeed(row.test_system_id, report(2, 2))
        engine.calls.clear()
        tick = await state.reconciler.tick()
        assert (tick.polled, tick.finished, tick.batches) == (500, 200, 5)
        # One poll per batch and at most one results call per batch: a batched read, never one per leg.
        assert engine.calls["poll"] == 5 and 1 <= engine.calls["results"] <= 5
        stored = await rows_by_id(state)
        assert Counter(stored[row.id].status for row in finishing) == {int(ResultStatus.COMPLETED): 200}
        assert {stored[row.id].result for row in finishing} == {1.0}
        assert Counter(stored[row.id].status for row in rows[:300]) == {int(ResultStatus.SCHEDULED): 300}

    memory_gateway.run(test)


def test_a_leg_past_its_deadline_is_timed_out(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        (row,) = await submit_many(state, 1)
        async with state.sessions() as session, session.begin():
            await session.execute(update(Leg).values(deadline=utcnow() - timedelta(seconds=1)))
        assert (await state.reconciler.tick()).finished == 1
        async with state.sessions() as session:
            leg = await session.get(Leg, row.test_system_id)
            stored = await session.get(Result, row.id)
        assert leg is not None and stored is not None
        assert (leg.outcome, stored.status) == (LegOutcome.TIMED_OUT, int(ResultStatus.FAILED))
        assert stored.result_json == {"celery_exception": "DeadlineExceeded", "message": machine.DEADLINE_MESSAGE}

    memory_gateway.run(test)


def test_a_poll_outage_after_dispatch_loses_nothing(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        rows = await submit_many(state, 3)
        for row in rows:
            engine.succeed(row.test_system_id, report(1, 2))
        engine.down = True
        assert (await state.reconciler.tick()).finished == 0
        assert {r.status for r in (await rows_by_id(state)).values()} == {int(ResultStatus.SCHEDULED)}
        engine.down = False
        assert (await state.reconciler.tick()).finished == 3
        assert {r.result for r in (await rows_by_id(state)).values()} == {0.5}

    memory_gateway.run(test)


def test_a_result_that_cannot_be_read_keeps_the_leg_open_until_it_can(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        (row,) = await submit_many(state, 1)
        engine.succeed(row.test_system_id, report(2, 2))
        engine.results_fail = True
        assert (await state.reconciler.tick()).finished == 0
        async with state.sessions() as session:
            leg = await session.get(Leg, row.test_system_id)
        assert leg is not None and not leg.finished
        engine.results_fail = False
        assert (await state.reconciler.tick()).finished == 1
        assert (await rows_by_id(state))[row.id].status == int(ResultStatus.COMPLETED)

    memory_gateway.run(test)


def test_the_outbox_sends_a_batch_once_the_engine_is_back(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        engine.down = True
        rows = await submit_many(state, 6)
        assert not engine.runs  # nothing reached the engine; the client still got its rows
        async with state.sessions() as session, session.begin():  # due now, not after the backoff
            await session.execute(update(Leg).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        engine.calls.clear()
        tick = await state.reconciler.tick()
        assert (tick.dispatched, engine.calls["submit"]) == (0, 1)  # one probe per engine while it is down
        engine.down = False
        async with state.sessions() as session, session.begin():
            await session.execute(update(Leg).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        assert (await state.reconciler.tick()).dispatched == 6
        assert set(engine.runs) == {row.test_system_id for row in rows}
        async with state.sessions() as session:
            legs = (await session.execute(select(Leg))).scalars().all()
        assert {leg.dispatch_state for leg in legs} == {DispatchState.SENT}

    memory_gateway.run(test)


def test_a_leg_the_engine_refuses_for_good_is_rejected(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        engine.down = True
        (row,) = await submit_many(state, 1)
        engine.down, engine.reject = False, "bad configuration"
        async with state.sessions() as session, session.begin():
            await session.execute(update(Leg).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        assert (await state.reconciler.tick()).finished == 1
        async with state.sessions() as session:
            leg = await session.get(Leg, row.test_system_id)
        assert leg is not None
        assert (leg.dispatch_state, leg.outcome, leg.last_error) == ("failed", "rejected", "bad configuration")
        assert (await rows_by_id(state))[row.id].status == int(ResultStatus.FAILED)

    memory_gateway.run(test)


def test_two_reconcilers_on_postgres_never_finish_the_same_leg_twice(memory_gateway_pg: MemoryGateway) -> None:
    engine = memory_gateway_pg.engine
    finishes: Counter[str] = Counter()

    def count(finished: machine.FinishedLeg) -> list[Any]:
        finishes[finished.leg.id] += 1
        return []

    async def test(state: GatewayState) -> None:
        rows = await submit_many(state, 120)
        for row in rows:
            engine.succeed(row.test_system_id, report(1, 1))
        state.finish_hooks.connect("count", count)
        other = start_gateway(memory_gateway_pg.settings, memory_gateway_pg.dispatcher())
        other.finish_hooks.connect("count", count)
        try:
            first, second = state.reconciler, other.reconciler
            first.batch_size = second.batch_size = 20
            ticks = await asyncio.gather(first.tick(), second.tick(), first.tick(), second.tick())
        finally:
            await other.close()
        assert sum(t.finished for t in ticks) == 120
        assert set(finishes) == {row.test_system_id for row in rows}
        assert set(finishes.values()) == {1}

    memory_gateway_pg.run(test)


def test_reconciler_needs_no_app_state(memory_gateway: MemoryGateway) -> None:
    """It is built from a session factory, a dispatcher and settings: no service locator."""

    async def test(state: GatewayState) -> None:
        reconciler = Reconciler(state.sessions, state.dispatcher, state.settings)
        (row,) = await submit_many(state, 1)
        memory_gateway.engine.runs[row.test_system_id].phase = LegPhase.RUNNING
        assert (await reconciler.tick()).polled == 1
        assert (await rows_by_id(state))[row.id].status == int(ResultStatus.RUNNING)

    memory_gateway.run(test)


def test_pushed_completions_finish_legs_without_any_tick(memory_gateway: MemoryGateway) -> None:
    """The engine announces the 200 that ended: they are final with no tick and no client read; the rest stay."""
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        state.reconciler.batch_size = 100
        rows = await submit_many(state, 500)
        stop = asyncio.Event()
        feeds = asyncio.create_task(state.reconciler.completions.follow(stop))
        try:
            assert await state.reconciler.completions.wait_following("celery", timeout=10)
            engine.calls.clear()
            for row in rows[300:]:
                engine.succeed(row.test_system_id, report(2, 2))
            assert await state.reconciler.completions.wait_pushed(200, timeout=30) == 200
        finally:
            stop.set()
            feeds.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeds
        # The 200 notices arrived together: one batch, read 100 at a time; the 300 others were never read.
        assert (engine.calls["poll"], engine.calls["results"]) == (2, 2)
        stored = await rows_by_id(state)
        assert Counter(stored[row.id].status for row in rows[300:]) == {int(ResultStatus.COMPLETED): 200}
        assert Counter(stored[row.id].status for row in rows[:300]) == {int(ResultStatus.SCHEDULED): 300}

    memory_gateway.run(test)


def test_a_lost_notice_is_caught_by_the_next_tick(memory_gateway: MemoryGateway) -> None:
    """Push is a hint: with the notices lost, the polling cycle still finishes every ended leg."""
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        rows = await submit_many(state, 5)
        engine.push = False
        for row in rows[:3]:
            engine.succeed(row.test_system_id, report(1, 1))
        assert state.reconciler.completions.pushed_finished == 0
        assert (await state.reconciler.tick()).finished == 3

    memory_gateway.run(test)


def test_a_pushed_leg_finished_before_its_send_was_recorded_is_closed(memory_gateway: MemoryGateway) -> None:
    """The engine may end a leg before the request recorded its send: the notice closes it all the same (marked
    sent first, so the request's own mark no longer applies); an id that is no open leg is dropped."""
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        (row,) = await submit_many(state, 1)
        leg_id = row.test_system_id
        async with state.sessions() as session, session.begin():
            await session.execute(update(Leg).values(dispatch_state=DispatchState.PENDING, dispatched_at=None))
        assert await state.reconciler.completions._refresh_ids([leg_id]) == (0, [])  # still running: nothing to do
        engine.succeed(leg_id, report(1, 1))
        assert await state.reconciler.completions._refresh_ids([leg_id, "not-a-leg"]) == (1, [])
        async with state.sessions() as session:
            leg = await session.get(Leg, leg_id)
        assert leg is not None and (leg.finished, leg.dispatch_state) == (True, DispatchState.SENT)
        assert leg.dispatched_at is not None
        assert (await rows_by_id(state))[row.id].status == int(ResultStatus.COMPLETED)
        assert await state.reconciler.completions._refresh_ids([leg_id]) == (0, [])  # finished: nothing left to retry

    memory_gateway.run(test)
