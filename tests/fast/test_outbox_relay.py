"""The outbox relay: a job for an engine that cannot refuse it is committed and answered without a send.

Issue 10 (the submit path at the reference's speed): the request's own send was most of its CPU under load.
An engine that takes whatever it is sent (Celery; here the in-memory engine with `refuses_at_submit=False`)
gets its legs from the reconciler's outbox flush, woken by the commit; an engine that may refuse (Prefect: a
missing deployment is the contract's 404) is still sent by the request. The real-engine side of this is every
Celery test (`tests/service`, `tests/conformance`): each of their jobs now travels through the relay.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import select, update

from backends.interface import JobSpec
from backends.memory.adapter import MemoryAdapter, MemoryEngine
from gateway.engines.dispatcher import Dispatcher, DispatchMode, SendBy, SendStatus
from gateway.jobs.shadow_admin import set_shadow
from gateway.jobs.submit import submit_test
from gateway.legs.states import DispatchState, LegRole
from gateway.runtime import GatewayState
from gateway.store.models import Leg, Result, utcnow
from gateway.store.outbox import OUTBOX_LEASE
from tests.fast.conftest import ADMIN, MemoryGateway, body

pytestmark = pytest.mark.fast


class RelayedCelery(MemoryGateway):
    """`celery` cannot refuse a job (relayed), `prefect` can (sent by the request); two separate engines."""

    def __init__(self, base: MemoryGateway) -> None:
        super().__init__(base.settings, base.engine)
        self.engines = {"celery": MemoryEngine(), "prefect": MemoryEngine()}

    def dispatcher(self) -> Dispatcher:
        adapters = {
            "celery": MemoryAdapter("celery", self.engines["celery"], refuses_at_submit=False),
            "prefect": MemoryAdapter("prefect", self.engines["prefect"], refuses_at_submit=True),
        }
        return Dispatcher(self.settings, adapter_factory=lambda name, _settings: adapters[name])


@pytest.fixture
def relayed(memory_gateway: MemoryGateway) -> RelayedCelery:
    return RelayedCelery(memory_gateway)


async def legs_of(state: GatewayState, row_id: str) -> list[Leg]:
    async with state.sessions() as session:
        return list((await session.execute(select(Leg).where(Leg.result_id == row_id))).scalars())


def test_the_dispatch_mode_follows_whether_the_engine_can_refuse(relayed: RelayedCelery) -> None:
    dispatcher = relayed.dispatcher()
    assert dispatcher.dispatch_mode("celery") is DispatchMode.OUTBOX
    assert dispatcher.dispatch_mode("prefect") is DispatchMode.REQUEST
    assert dispatcher.dispatch_mode("no-such-engine") is DispatchMode.REQUEST  # the request's send reports it


def test_a_relayed_job_is_answered_without_a_send_and_the_next_flush_sends_it(relayed: RelayedCelery) -> None:
    celery = relayed.engines["celery"]

    async def test(state: GatewayState) -> None:
        row, new = await submit_test(state, ADMIN, body("c1"))
        assert new and row.status == 3
        [leg] = await legs_of(state, row.id)
        # Committed, due at once, and no engine work in the request.
        assert celery.calls["submit"] == 0 and leg.id not in celery.runs
        assert leg.dispatch_state == DispatchState.PENDING and leg.next_attempt_at == leg.created_at
        report = await state.reconciler.relay.flush_now()
        [leg] = await legs_of(state, row.id)
        assert report.dispatched == 1 and celery.calls["submit"] == 1 and leg.id in celery.runs
        assert leg.dispatch_state == DispatchState.SENT and leg.dispatch_attempts == 1

    relayed.run(test)


def test_a_job_for_an_engine_that_can_refuse_is_still_sent_by_its_request(relayed: RelayedCelery) -> None:
    prefect = relayed.engines["prefect"]

    async def test(state: GatewayState) -> None:
        row, _new = await submit_test(state, ADMIN, body("c1", content="week2/ex1"))
        [leg] = await legs_of(state, row.id)
        assert prefect.calls["submit"] == 1 and leg.dispatch_state == DispatchState.SENT
        assert (await state.reconciler.relay.flush_now()).dispatched == 0  # nothing left for the relay

    relayed.run(test)


def test_the_commit_wakes_the_in_process_relay_which_sends_at_once(relayed: RelayedCelery) -> None:
    celery = relayed.engines["celery"]

    async def test(state: GatewayState) -> None:
        stop = asyncio.Event()
        woken = asyncio.create_task(state.reconciler.relay.flush_woken(stop))
        try:
            rows = [(await submit_test(state, ADMIN, body(f"c{n}")))[0] for n in range(5)]
            # No tick runs here: only the wake-ups of the commits can have sent them.
            await state.reconciler.relay.wait_woken_flushes(1, timeout=30)
            for _ in range(50):
                legs = [leg for row in rows for leg in await legs_of(state, row.id)]
                if all(leg.dispatch_state == DispatchState.SENT for leg in legs):
                    break
                await state.reconciler.relay.wait_woken_flushes(state.reconciler.relay.woken_flushes + 1, timeout=1)
            assert [leg.dispatch_state for leg in legs] == [DispatchState.SENT] * 5
            assert celery.calls["submit"] == 5
        finally:
            stop.set()
            await woken

    relayed.run(test)


def test_a_shadow_of_a_relayed_primary_is_sent_after_it_by_the_relay(relayed: RelayedCelery) -> None:
    celery, prefect = relayed.engines["celery"], relayed.engines["prefect"]

    async def test(state: GatewayState) -> None:
        values = {"engine": "prefect", "fraction": 1.0}
        await set_shadow(state.sessions, backend="celery-main", content=None, values=values, user_id="u-admin")
        row, _new = await submit_test(state, ADMIN, body("c1"))
        first = await state.reconciler.relay.flush_now()
        by_role = {leg.role: leg for leg in await legs_of(state, row.id)}
        # The first flush takes the primary only: its shadow waits for the primary's first send.
        assert first.dispatched == 1 and by_role[LegRole.PRIMARY].dispatch_state == DispatchState.SENT
        assert by_role[LegRole.SHADOW].dispatch_state == DispatchState.PENDING and prefect.calls["submit"] == 0
        second = await state.reconciler.relay.flush_now()
        by_role = {leg.role: leg for leg in await legs_of(state, row.id)}
        assert second.dispatched == 1 and by_role[LegRole.SHADOW].dispatch_state == DispatchState.SENT
        assert (celery.calls["submit"], prefect.calls["submit"]) == (1, 1)

    relayed.run(test)


def test_a_batch_keeps_its_order_with_primaries_and_shadows_mixed(relayed: RelayedCelery) -> None:
    celery = relayed.engines["celery"]
    spec = {"kind": "student_testing", "params": {"test_job": {}}, "properties": {}, "priority": 8}
    legs = [(f"leg-{n}", {**spec, "shadow": n % 3 == 0}, False) for n in range(11)]

    async def test(state: GatewayState) -> None:
        outcomes = await state.dispatcher.send_many("celery", legs)
        assert [o.engine_run_id for o in outcomes] == [f"leg-{n}" for n in range(11)]
        assert {o.status for o in outcomes} == {SendStatus.SENT} and celery.calls["submit"] == 11
        assert [celery.runs[f"leg-{n}"].job.shadow for n in range(11)] == [n % 3 == 0 for n in range(11)]

    relayed.run(test)


class HeldSend(MemoryAdapter):
    """A send that the engine has taken (the run exists and may finish) but that has not returned yet: what a
    fast Celery task looks like from the relay, whose `send_task` returns after the worker is done."""

    def __init__(self, engine: MemoryEngine) -> None:
        super().__init__("celery", engine, refuses_at_submit=False)
        self.taken = threading.Event()
        self.release = threading.Event()

    def submit(self, job: JobSpec, leg_id: str, priority: int = 8) -> str:
        run_id = super().submit(job, leg_id, priority)
        self.taken.set()
        assert self.release.wait(30), "the test never released the send"
        return run_id


def test_a_job_that_ends_while_its_send_is_out_is_closed_at_once(memory_gateway_pg: MemoryGateway) -> None:
    """PostgreSQL: the relay holds no lock while it sends (its claim is a committed lease), so the engine's
    completion closes the leg at once; another flush meanwhile does not send it again, and the relay's own
    sent mark afterwards changes nothing."""
    engine = MemoryEngine()
    held = HeldSend(engine)

    class Gateway(MemoryGateway):
        def dispatcher(self) -> Dispatcher:
            prefect = MemoryAdapter("prefect", engine)
            return Dispatcher(self.settings, adapter_factory=lambda name, _s: held if name == "celery" else prefect)

    async def test(state: GatewayState) -> None:
        row, _new = await submit_test(state, ADMIN, body("c1"))
        [leg] = await legs_of(state, row.id)
        flush = asyncio.create_task(state.reconciler.relay.flush_now())
        try:
            assert await asyncio.to_thread(held.taken.wait, 30)
            engine.succeed(leg.id, {"tests": [], "summary": {"total": 1, "passed": 1}})
            assert (
                await state.reconciler.completions.apply_completions([leg.id]) == 1
            )  # not locked: closed on the first try
            again = await state.reconciler.relay.flush_now()  # the lease keeps it from a second send
            assert again.dispatched == 0 and engine.calls["submit"] == 1
        finally:
            held.release.set()
            report = await flush
        assert report.dispatched == 1
        [leg] = await legs_of(state, row.id)
        assert (leg.finished, leg.dispatch_state, leg.dispatch_attempts) == (True, DispatchState.SENT, 1)
        async with state.sessions() as session:
            assert (await session.get(Result, row.id)).status == 0  # COMPLETED

    Gateway(memory_gateway_pg.settings, engine).run(test)


def test_legs_not_tried_while_their_engine_is_down_stay_due(relayed: RelayedCelery) -> None:
    """One failed probe per engine and flush: the legs behind it were not tried, so they are due again at once
    (their lease is handed back), while the probed one waits for its backoff."""
    celery = relayed.engines["celery"]

    async def test(state: GatewayState) -> None:
        rows = [(await submit_test(state, ADMIN, body(f"c{n}")))[0] for n in range(3)]
        celery.down = True
        down = await state.reconciler.relay.flush_now()
        assert (down.dispatched, down.deferred) == (0, 1)
        celery.down = False
        back = await state.reconciler.relay.flush_now()
        legs = [leg for row in rows for leg in await legs_of(state, row.id)]
        assert back.dispatched == 2 and sorted(leg.dispatch_attempts for leg in legs) == [1, 1, 1]
        assert sorted(leg.dispatch_state for leg in legs) == [DispatchState.PENDING] + [DispatchState.SENT] * 2

    relayed.run(test)


def test_a_leg_handed_to_the_running_relay_is_leased_and_needs_no_claim(relayed: RelayedCelery) -> None:
    """While this process's relay runs, a relayed leg is committed under its lease and handed over in memory:
    the next flush sends it without reading it back; if the process stops first, the lease keeps other relays
    off it until it ends, and then any relay sends it."""
    celery = relayed.engines["celery"]

    async def test(state: GatewayState) -> None:
        assert state.send_by("celery") is SendBy.RELAY  # no wake-up loop runs yet
        state.reconciler.relay.relaying = True  # as while `flush_woken` runs
        assert state.send_by("celery") is SendBy.HAND_OVER and state.send_by("prefect") is SendBy.REQUEST
        row, _new = await submit_test(state, ADMIN, body("c1"))
        [leg] = await legs_of(state, row.id)
        assert leg.next_attempt_at == leg.created_at + OUTBOX_LEASE and celery.calls["submit"] == 0
        handed = await state.reconciler.relay.flush_now()
        [leg] = await legs_of(state, row.id)
        assert handed.dispatched == 1 and leg.dispatch_state == DispatchState.SENT and celery.calls["submit"] == 1

        # The same, but the process stops before the send: its hand-over is lost with it.
        row, _new = await submit_test(state, ADMIN, body("c2"))
        state.reconciler.relay._handed.clear()
        assert (await state.reconciler.relay.flush_now()).dispatched == 0  # leased: nobody else sends it yet
        async with state.sessions() as session, session.begin():  # the lease ends
            await session.execute(update(Leg).where(Leg.result_id == row.id).values(next_attempt_at=utcnow()))
        assert (await state.reconciler.relay.flush_now()).dispatched == 1 and celery.calls["submit"] == 2

    relayed.run(test)


def test_a_pushed_completion_for_a_leg_held_elsewhere_is_retried(memory_gateway_pg: MemoryGateway) -> None:
    """PostgreSQL: a completion whose leg another writer holds is not dropped: it is tried again once the lock
    is gone, and closes the leg then."""
    relayed = RelayedCelery(memory_gateway_pg)
    celery = relayed.engines["celery"]

    async def test(state: GatewayState) -> None:
        row, _new = await submit_test(state, ADMIN, body("c1"))
        await state.reconciler.relay.flush_now()
        [leg] = await legs_of(state, row.id)
        celery.succeed(leg.id, {"tests": [], "summary": {"total": 1, "passed": 1}})
        first_try = asyncio.Event()
        refresh = state.reconciler.completions._refresh_ids

        async def counted(ids: list[str]) -> tuple[int, list[str]]:
            found = await refresh(ids)
            first_try.set()
            return found

        state.reconciler.completions._refresh_ids = counted  # type: ignore[method-assign]
        async with state.sessions() as holder, holder.begin():  # another writer holds the leg
            await holder.execute(select(Leg).where(Leg.id == leg.id).with_for_update())
            pushed = asyncio.create_task(state.reconciler.completions.apply_completions([leg.id]))
            await asyncio.wait_for(first_try.wait(), 30)
        assert await pushed == 1
        [leg] = await legs_of(state, row.id)
        assert leg.finished

    relayed.run(test)
