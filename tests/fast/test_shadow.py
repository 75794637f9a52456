"""Shadow legs against two in-memory engines: fenced from the row, counted when skipped, compared when final."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from backends.interface import DeploymentNotFound, JobSpec
from backends.memory.adapter import MemoryAdapter, MemoryEngine
from common.legacy import ResultStatus
from gateway.compare.experiment import Experiment
from gateway.engines.dispatcher import Dispatcher
from gateway.jobs import results
from gateway.jobs.bootstrap import start_gateway
from gateway.jobs.shadow_admin import set_shadow, show_shadow
from gateway.jobs.submit import submit_test
from gateway.legs.machine import next_attempt
from gateway.legs.states import DispatchState, LegOutcome, LegRole
from gateway.runtime import GatewayState
from gateway.store.accounts import Principal
from gateway.store.leg_writer import record_retry
from gateway.store.models import Comparison, FlakeStat, Leg, Result, utcnow
from gateway.store.result_list import ResultFilter
from tests.fast.conftest import ADMIN, MemoryGateway, body

pytestmark = pytest.mark.fast

WORKER = Principal("u-worker", "worker", "worker")


def legacy_report(verdicts: dict[str, str], message: str = "") -> dict[str, Any]:
    """A legacy report tree with one collection; `verdicts` maps test name → PASSED/FAILED."""
    tests = [
        {
            "name": name,
            "type": "test",
            "status": "COMPLETED",
            "result": verdict,
            "resultMessage": message if verdict == "FAILED" else "",
            "summary": {"total": 1, "passed": int(verdict == "PASSED"), "failed": int(verdict == "FAILED")},
            "timestamp": utcnow().isoformat(),
            "duration": 0.1,
        }
        for name, verdict in verdicts.items()
    ]
    passed = sum(v == "PASSED" for v in verdicts.values())
    summary = {"total": len(verdicts), "passed": passed, "failed": len(verdicts) - passed, "skipped": 0}
    collection = {"name": "test_calc.py", "type": "collection", "tests": tests, "summary": summary}
    return {"name": "week1/ex1", "type": "report", "status": "COMPLETED", "summary": summary, "tests": [collection]}


class TwoEngines(MemoryGateway):
    """Celery and Prefect as two separate scripted engines (one can be down while the other is up)."""

    def __init__(self, base: MemoryGateway) -> None:
        super().__init__(base.settings, base.engine)
        self.engines = {"celery": MemoryEngine(), "prefect": MemoryEngine()}

    def dispatcher(self) -> Dispatcher:
        adapters = {name: MemoryAdapter(name, engine) for name, engine in self.engines.items()}
        return Dispatcher(self.settings, adapter_factory=lambda name, _settings: adapters[name])

    def run(self, test: Any) -> Any:
        async def main() -> Any:
            state = start_gateway(self.settings, self.dispatcher())
            try:
                return await test(state)
            finally:
                await state.close()

        return asyncio.run(main())


@pytest.fixture
def gw(memory_gateway: MemoryGateway) -> TwoEngines:
    """Its own store, a copy of the session's seeded one (migrating a new file per test was most of its setup)."""
    return TwoEngines(memory_gateway)


async def shadow_on(state: GatewayState, **values: Any) -> None:
    values = {"engine": "prefect", "fraction": 1.0, **values}
    await set_shadow(state.sessions, backend="celery-main", content=None, values=values, user_id="u-admin")


async def legs_of(state: GatewayState, row_id: str) -> dict[str, Leg]:
    async with state.sessions() as session:
        legs = (await session.execute(select(Leg).where(Leg.result_id == row_id))).scalars().all()
    return {leg.role if leg.role != LegRole.SHADOW else f"shadow:{leg.engine}": leg for leg in legs}


async def comparisons(state: GatewayState) -> list[Comparison]:
    async with state.sessions() as session:
        return list((await session.execute(select(Comparison).order_by(Comparison.created_at))).scalars())


async def row_of(state: GatewayState, row_id: str) -> Result:
    async with state.sessions() as session:
        row = await session.get(Result, row_id)
    assert row is not None
    return row


async def submitted(state: GatewayState, commit: str, submit: bool = False) -> tuple[Result, dict[str, Leg]]:
    row, _new = await submit_test(state, ADMIN, body(commit, submit=submit))
    await state.reconciler.relay.flush_now()  # what the woken reconciler does: send the shadow legs
    return row, await legs_of(state, row.id)


# ------------------------------------------------------------------------------------------ the shadow leg
def test_shadowing_off_writes_one_leg_and_counts_the_skip(gw: TwoEngines) -> None:
    async def test(state: GatewayState) -> None:
        row, legs = await submitted(state, "c1")
        assert set(legs) == {"primary"}
        assert legs["primary"].routing["shadow"] == {"skipped": "shadowing_off"}
        await state.reconciler.tick()
        skipped = (await show_shadow(state.sessions))["skipped"]
        assert [(s["reason"], s["count"]) for s in skipped] == [("shadowing_off", 1)]

    gw.run(test)


def test_the_shadow_leg_is_written_with_the_row_sent_after_the_primary_and_fenced(gw: TwoEngines) -> None:
    celery, prefect = gw.engines["celery"], gw.engines["prefect"]

    async def test(state: GatewayState) -> None:
        await shadow_on(state, deadline_seconds=600)
        row, legs = await submitted(state, "c1", submit=True)
        primary, shadow = legs["primary"], legs["shadow:prefect"]
        assert primary.routing["shadow"]["legs"] == [shadow.id]
        assert (shadow.routing["experiment"], shadow.routing["primary_leg"]) == ("shadow", primary.id)
        assert shadow.task_name == primary.task_name  # the task name never changes for a shadow
        assert shadow.spec["params"]["test_job"]["submit"] is False and shadow.spec["shadow"] is True
        assert shadow.deadline is not None and shadow.deadline - shadow.created_at == timedelta(seconds=600)
        assert shadow.dispatch_state == DispatchState.SENT
        # The engines saw the shadow marked as such; the primary unmarked.
        assert prefect.runs[shadow.id].job.shadow is True and celery.runs[primary.id].job.shadow is False
        # The shadow ends first with another verdict: the row does not move; no submission leg from a shadow.
        prefect.succeed(shadow.id, legacy_report({"test_add": "FAILED"}))
        await state.reconciler.tick()
        stored = await row_of(state, row.id)
        assert (stored.status, stored.result_json) == (int(ResultStatus.SCHEDULED), None)
        assert "submission" not in await legs_of(state, row.id)
        celery.succeed(primary.id, legacy_report({"test_add": "PASSED"}))
        await state.reconciler.tick()
        stored = await row_of(state, row.id)
        assert (stored.status, stored.result) == (int(ResultStatus.COMPLETED), 1.0)
        # One submission leg, started by the primary only.
        assert (await legs_of(state, row.id))["submission"].engine == "celery"
        (comparison,) = await comparisons(state)
        assert (comparison.outcome, comparison.primary_score, comparison.shadow_score) == ("mismatch", 1.0, 0.0)
        paths = {d["path"] for d in comparison.differences}
        assert '$.tests["test_calc.py"].tests["test_add"].result' in paths and "$.score" in paths

    gw.run(test)


def test_the_answer_sends_no_shadow_the_reconciler_does_once_the_primary_was_tried(gw: TwoEngines) -> None:
    prefect = gw.engines["prefect"]

    async def test(state: GatewayState) -> None:
        await shadow_on(state)
        row, _new = await submit_test(state, ADMIN, body("c1"))
        legs = await legs_of(state, row.id)
        shadow = legs["shadow:prefect"]
        # The request sent the primary only; the shadow waits, due, in the outbox (the reconciler was woken).
        assert legs["primary"].dispatch_state == DispatchState.SENT
        assert (shadow.dispatch_state, shadow.dispatch_attempts) == (DispatchState.PENDING, 0)
        assert shadow.id not in prefect.runs
        assert (await state.reconciler.relay.flush_now()).dispatched == 1
        assert shadow.id in prefect.runs
        assert (await legs_of(state, row.id))["shadow:prefect"].dispatch_state == DispatchState.SENT

        # A shadow whose primary's request has not tried its send yet is held back (dispatched after the
        # primary); once that attempt is recorded (here: deferred, its engine down) the shadow goes.
        row2, _new = await submit_test(state, ADMIN, body("c2"))
        legs2 = await legs_of(state, row2.id)
        primary2, shadow2 = legs2["primary"], legs2["shadow:prefect"]
        async with state.sessions() as session, session.begin():  # as if its request were still sending it
            await session.execute(
                update(Leg)
                .where(Leg.id == primary2.id)
                .values(dispatch_state="pending", dispatch_attempts=0, next_attempt_at=utcnow() + timedelta(minutes=1))
            )
        assert (await state.reconciler.relay.flush_now()).dispatched == 0 and shadow2.id not in prefect.runs
        async with state.sessions() as session, session.begin():
            now = utcnow()
            await record_retry(session, primary2.id, "celery down", now, next_attempt(now, 1))
        assert (await state.reconciler.relay.flush_now()).dispatched == 1 and shadow2.id in prefect.runs

    gw.run(test)


def test_a_shadow_engine_another_process_failed_to_reach_is_skipped_as_unreachable(gw: TwoEngines) -> None:
    """The API sends no shadow itself: it learns that the shadow engine is down from the outbox the reconciler
    (here a second gateway state with its own dispatcher, as `gateway reconcile` would be) left behind."""
    prefect = gw.engines["prefect"]

    async def test(api: GatewayState) -> None:
        api.shadow.stalled.ttl = 0  # read the outbox on every decision (the cache's expiry is not under test)
        reconciler = start_gateway(gw.settings, gw.dispatcher())
        try:
            await shadow_on(api)
            prefect.down = True
            _row, legs = await submitted_elsewhere(api, reconciler, "c1")
            assert legs["shadow:prefect"].dispatch_state == DispatchState.PENDING
            assert api.dispatcher.reachable("prefect")  # this process never talked to Prefect
            _row2, legs2 = await submitted_elsewhere(api, reconciler, "c2")
            assert set(legs2) == {"primary"}
            assert legs2["primary"].routing["shadow"]["skipped"] == "engine_unreachable"
            prefect.down = False  # back: once its retry is due the outbox empties, and shadows are taken again
            async with api.sessions() as session, session.begin():
                await session.execute(update(Leg).where(Leg.role == "shadow").values(next_attempt_at=utcnow()))
            assert (await reconciler.reconciler.relay.flush_now()).dispatched == 1
            _row3, legs3 = await submitted_elsewhere(api, reconciler, "c3")
            assert legs3["shadow:prefect"].dispatch_state == DispatchState.SENT
        finally:
            await reconciler.close()

    gw.run(test)


def test_embedded_the_in_process_reconciler_is_woken_by_the_answer(gw: TwoEngines) -> None:
    """SQLite (the embedded default, `gateway up`): no NOTIFY; the submit path wakes the reconciler in its own
    process, whose woken flush (no tick running here) sends the shadow leg."""
    prefect = gw.engines["prefect"]

    async def test(state: GatewayState) -> None:
        assert not state.is_postgres
        await shadow_on(state)
        stop = asyncio.Event()
        woken = asyncio.create_task(state.reconciler.relay.flush_woken(stop))
        try:
            row, _new = await submit_test(state, ADMIN, body("c1"))
            assert await state.reconciler.relay.wait_woken_flushes(1, 30) >= 1
            shadow = (await legs_of(state, row.id))["shadow:prefect"]
            assert shadow.dispatch_state == DispatchState.SENT and shadow.id in prefect.runs
        finally:
            stop.set()
            await woken

    gw.run(test)


class MissingDeployment(MemoryAdapter):
    """A Prefect whose shadow deployment does not exist (the setting names one that was never deployed)."""

    def submit(self, job: JobSpec, leg_id: str, priority: int = 8) -> str:
        if job.properties.get("deployment") == "no-such-flow/system":
            raise DeploymentNotFound("no-such-flow/system")
        return super().submit(job, leg_id, priority)


def test_a_shadow_whose_deployment_is_missing_ends_at_its_first_send(gw: TwoEngines) -> None:
    celery, prefect = gw.engines["celery"], gw.engines["prefect"]
    adapters = {"celery": MemoryAdapter("celery", celery), "prefect": MissingDeployment("prefect", prefect)}

    async def test(_state: GatewayState) -> None:
        state = start_gateway(gw.settings, Dispatcher(gw.settings, adapter_factory=lambda name, _s: adapters[name]))
        try:
            await shadow_on(state, properties={"deployment": "no-such-flow/system"})
            row, legs = await submitted(state, "c1")
            shadow = legs["shadow:prefect"]
            assert (shadow.finished, shadow.dispatch_state) == (True, DispatchState.FAILED)
            assert "no-such-flow" in (shadow.last_error or "")
            assert legs["primary"].dispatch_state == DispatchState.SENT  # the job goes on
        finally:
            await state.close()

    gw.run(test)


async def submitted_elsewhere(
    api: GatewayState, reconciler: GatewayState, commit: str
) -> tuple[Result, dict[str, Leg]]:
    row, _new = await submit_test(api, ADMIN, body(commit))
    await reconciler.reconciler.relay.flush_now()
    return row, await legs_of(api, row.id)


def test_on_postgres_a_reconciler_in_another_process_is_woken_by_the_primarys_send(
    memory_gateway_pg: MemoryGateway,
) -> None:
    """The trigger of migration 0008: the primary's first send raises a NOTIFY; a reconciler with no tick running
    (only its outbox listener) sends the shadow leg."""
    gw = TwoEngines(memory_gateway_pg)
    prefect = gw.engines["prefect"]

    async def test(api: GatewayState) -> None:
        elsewhere = start_gateway(gw.settings, gw.dispatcher())
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(elsewhere.reconciler.listener.listen(stop)),
            asyncio.create_task(elsewhere.reconciler.relay.flush_woken(stop)),
        ]
        try:
            await shadow_on(api)
            await asyncio.wait_for(elsewhere.reconciler.listener.listening.wait(), 30)
            assert await elsewhere.reconciler.relay.wait_woken_flushes(1, 30) == 1  # the flush on (re)connecting
            row, _new = await submit_test(api, ADMIN, body("c1"))
            assert await elsewhere.reconciler.relay.wait_woken_flushes(2, 30) >= 2
            legs = await legs_of(api, row.id)
            assert legs["shadow:prefect"].dispatch_state == DispatchState.SENT
            assert legs["shadow:prefect"].id in prefect.runs
            assert api.reconciler.relay.woken_flushes == 0  # the API process sent nothing but the primaries
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await elsewhere.close()

    gw.run(test)


def test_matching_reports_with_noise_fields_match(gw: TwoEngines) -> None:
    celery, prefect = gw.engines["celery"], gw.engines["prefect"]

    async def test(state: GatewayState) -> None:
        await shadow_on(state)
        _row, legs = await submitted(state, "c1")
        left = legacy_report({"test_a": "PASSED", "test_b": "FAILED"}, "assert 1 == 2 in /tmp/run-abc/test_calc.py")
        right = legacy_report({"test_b": "FAILED", "test_a": "PASSED"}, "assert 1 == 2 in /tmp/run-xyz/test_calc.py")
        right["environment"] = {"engine": "prefect"}
        celery.succeed(legs["primary"].id, left)
        prefect.succeed(legs["shadow:prefect"].id, right)
        tick = await state.reconciler.tick()
        assert tick.steps["comparison"] == 1
        (comparison,) = await comparisons(state)
        assert (comparison.outcome, comparison.differences, comparison.kind) == ("match", None, "shadow")

    gw.run(test)


def test_a_failed_shadow_is_an_infra_error_on_the_shadow_side_and_the_primary_is_untouched(gw: TwoEngines) -> None:
    celery, prefect = gw.engines["celery"], gw.engines["prefect"]

    async def test(state: GatewayState) -> None:
        await shadow_on(state)
        row, legs = await submitted(state, "c1")
        prefect.fail(legs["shadow:prefect"].id, "Git clone of student repository failed.")
        celery.succeed(legs["primary"].id, legacy_report({"test_a": "PASSED"}))
        await state.reconciler.tick()
        assert (await row_of(state, row.id)).status == int(ResultStatus.COMPLETED)
        (comparison,) = await comparisons(state)
        assert (comparison.outcome, comparison.side) == ("infra_error", "shadow")
        assert "clone" in comparison.reason

    gw.run(test)


def test_a_shadow_engine_that_is_down_never_delays_the_primary(gw: TwoEngines) -> None:
    celery, prefect = gw.engines["celery"], gw.engines["prefect"]

    async def test(state: GatewayState) -> None:
        await shadow_on(state, deadline_seconds=60)
        prefect.down = True
        row, legs = await submitted(state, "c1")
        assert legs["primary"].dispatch_state == DispatchState.SENT
        shadow = legs["shadow:prefect"]
        assert shadow.dispatch_state == DispatchState.PENDING and "down" in (shadow.last_error or "")
        # While the engine is known to be down, new jobs skip their shadow (counted).
        _row2, legs2 = await submitted(state, "c2")
        assert set(legs2) == {"primary"} and legs2["primary"].routing["shadow"]["skipped"] == "engine_unreachable"
        celery.succeed(legs["primary"].id, legacy_report({"test_a": "PASSED"}))
        await state.reconciler.tick()
        assert (await row_of(state, row.id)).status == int(ResultStatus.COMPLETED)
        async with state.sessions() as session, session.begin():  # the shadow's deadline passes
            await session.execute(
                update(Leg).where(Leg.id == shadow.id).values(deadline=utcnow() - timedelta(seconds=1))
            )
        await state.reconciler.tick()
        (comparison,) = await comparisons(state)
        assert (comparison.outcome, comparison.side) == ("infra_error", "shadow")
        assert "never accepted" in comparison.reason

    gw.run(test)


def test_a_shadow_past_its_deadline_is_a_shadow_timeout(gw: TwoEngines) -> None:
    celery = gw.engines["celery"]

    async def test(state: GatewayState) -> None:
        await shadow_on(state)
        _row, legs = await submitted(state, "c1")
        celery.succeed(legs["primary"].id, legacy_report({"test_a": "PASSED"}))
        shadow = legs["shadow:prefect"]
        async with state.sessions() as session, session.begin():
            await session.execute(
                update(Leg).where(Leg.id == shadow.id).values(deadline=utcnow() - timedelta(seconds=1))
            )
        await state.reconciler.tick()
        leg = (await legs_of(state, _row.id))["shadow:prefect"]
        assert (leg.finished, leg.outcome) == (True, LegOutcome.TIMED_OUT)
        (comparison,) = await comparisons(state)
        assert comparison.outcome == "shadow_timeout"

    gw.run(test)


def test_the_cap_and_the_sampling_are_counted(gw: TwoEngines) -> None:
    async def test(state: GatewayState) -> None:
        await shadow_on(state, max_in_flight=2)
        draws = iter([0.1, 0.1, 0.1, 0.9, 0.1])
        state.shadow.sample = lambda: next(draws)
        await shadow_on(state, fraction=0.5, max_in_flight=2)
        state.shadow.in_flight.forget()
        kinds = Counter()
        for i in range(5):
            _row, legs = await submitted(state, f"c{i}")
            kinds["shadow" if "shadow:prefect" in legs else legs["primary"].routing["shadow"]["skipped"]] += 1
        assert kinds == {"shadow": 2, "cap_reached": 2, "sampled_out": 1}
        await state.reconciler.tick()
        counts = {s["reason"]: s["count"] for s in (await show_shadow(state.sessions))["skipped"]}
        assert counts == {"cap_reached": 2, "sampled_out": 1}

    gw.run(test)


def test_a_content_override_wins_and_changes_apply_to_new_jobs_without_restart(gw: TwoEngines) -> None:
    async def test(state: GatewayState) -> None:
        await shadow_on(state)
        _row, legs = await submitted(state, "c1")
        assert "shadow:prefect" in legs
        await set_shadow(state.sessions, backend=None, content="cc-main", values={"enabled": False}, user_id=None)
        _row, legs = await submitted(state, "c2")
        assert set(legs) == {"primary"} and legs["primary"].routing["shadow"]["skipped"] == "shadowing_off"

    gw.run(test)


# ---------------------------------------------------------------------------------------------- write-back
def test_a_write_back_from_an_unknown_deployment_lands_on_the_shadow_leg(gw: TwoEngines) -> None:
    celery = gw.engines["celery"]

    async def test(state: GatewayState) -> None:
        await shadow_on(state)
        row, legs = await submitted(state, "c1")
        shadow = legs["shadow:prefect"]
        # The flow knows its own run id (and, 25.6, sends its job's ids with it, as the platform's flow does):
        # the lookup answers the shadow leg's id, not the row's.
        job = {"execution_backend_id": row.execution_backend_id, "course_member_id": row.course_member_id}
        query = ResultFilter(test_system_id=shadow.engine_run_id, course_content_id=row.course_content_id, **job)
        total, (view,) = await results.list_results(state, WORKER, query, 0, 100)
        assert total == 1 and view.id == shadow.id and view.id != row.id
        other = replace(query, course_member_id="m-someone-else")
        assert await results.list_results(state, WORKER, other, 0, 100) == (0, [])
        await results.write_back(state, WORKER, view.id, {"status": 5})
        report = legacy_report({"test_a": "FAILED"})
        await results.write_back(state, WORKER, view.id, {"status": 0, "result": 0.0, "result_json": report})
        stored = await row_of(state, row.id)
        assert (stored.status, stored.result_json) == (int(ResultStatus.SCHEDULED), None)
        leg = (await legs_of(state, row.id))["shadow:prefect"]
        assert (leg.outcome, leg.payload) == (LegOutcome.SUCCEEDED_BY_WRITE_BACK, report)
        celery.succeed(legs["primary"].id, legacy_report({"test_a": "PASSED"}))
        await state.reconciler.tick()
        (comparison,) = await comparisons(state)
        assert comparison.outcome == "mismatch"
        assert (await row_of(state, row.id)).result == 1.0

    gw.run(test)


# -------------------------------------------------------------------------------------------- A/A and noise
def test_an_aa_flake_makes_a_later_mismatch_on_that_test_noise(gw: TwoEngines) -> None:
    celery, prefect = gw.engines["celery"], gw.engines["prefect"]

    async def test(state: GatewayState) -> None:
        await shadow_on(state, aa_fraction=1.0)
        _row, legs = await submitted(state, "c1")
        aa = next(leg for key, leg in legs.items() if key == "shadow:celery")
        celery.succeed(legs["primary"].id, legacy_report({"test_random": "PASSED", "test_a": "PASSED"}))
        celery.succeed(aa.id, legacy_report({"test_random": "FAILED", "test_a": "PASSED"}))
        prefect.succeed(legs["shadow:prefect"].id, legacy_report({"test_random": "FAILED", "test_a": "PASSED"}))
        await state.reconciler.tick()
        outcomes = {c.kind: c.outcome for c in await comparisons(state)}
        assert outcomes == {"aa": "mismatch", "shadow": "noise"}
        async with state.sessions() as session:
            stats = {s.test_key: (s.runs, s.flips) for s in (await session.execute(select(FlakeStat))).scalars()}
        assert stats == {"test_calc.py::test_random": (1, 1), "test_calc.py::test_a": (1, 0)}
        # A mismatch on a test that never flipped stays a real mismatch.
        await set_shadow(state.sessions, backend="celery-main", content=None, values={"aa_fraction": 0.0}, user_id=None)
        _row2, legs2 = await submitted(state, "c2")
        celery.succeed(legs2["primary"].id, legacy_report({"test_random": "PASSED", "test_a": "PASSED"}))
        prefect.succeed(legs2["shadow:prefect"].id, legacy_report({"test_random": "PASSED", "test_a": "FAILED"}))
        await state.reconciler.tick()
        assert (await comparisons(state))[-1].outcome == "mismatch"

    gw.run(test)


def test_a_comparator_that_raises_is_recorded_and_the_reconciler_goes_on(
    gw: TwoEngines, monkeypatch: pytest.MonkeyPatch
) -> None:
    celery, prefect = gw.engines["celery"], gw.engines["prefect"]

    def broken(self: Experiment, *_args: Any) -> Any:
        raise RuntimeError("comparator bug")

    async def test(state: GatewayState) -> None:
        await shadow_on(state)
        row, legs = await submitted(state, "c1")
        monkeypatch.setattr(Experiment, "run", broken)  # a fault no report can cause: the comparator's own bug
        celery.succeed(legs["primary"].id, legacy_report({"test_a": "PASSED"}))
        prefect.succeed(legs["shadow:prefect"].id, legacy_report({"test_a": "PASSED"}))
        await state.reconciler.tick()
        (comparison,) = await comparisons(state)
        assert (comparison.outcome, comparison.reason) == ("compare_error", "RuntimeError: comparator bug")
        assert (await row_of(state, row.id)).status == int(ResultStatus.COMPLETED)

    gw.run(test)


def test_on_postgres_the_row_and_both_legs_are_one_statement(memory_gateway_pg: MemoryGateway) -> None:
    gw = TwoEngines(memory_gateway_pg)

    async def test(state: GatewayState) -> None:
        await shadow_on(state, aa_fraction=1.0)
        row, legs = await submitted(state, "c1")
        assert set(legs) == {"primary", "shadow:prefect", "shadow:celery"}
        assert {leg.result_id for leg in legs.values()} == {row.id}
        assert sorted(legs["primary"].routing["shadow"]["legs"]) == sorted(
            leg.id for key, leg in legs.items() if key.startswith("shadow:")
        )

    gw.run(test)


def test_the_cli_sets_and_shows_shadowing(gw: TwoEngines, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from common.settings import get_settings
    from gateway.cli import app

    monkeypatch.setenv("GATEWAY_DATA_DIR", str(gw.settings.gateway_data_dir))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        done = runner.invoke(
            app, ["shadow", "set", "--backend", "celery-main", "--engine", "prefect", "--fraction", "0.25"]
        )
        assert done.exit_code == 0, done.output
        shown = runner.invoke(app, ["shadow", "show", "--json"])
        (setting,) = json.loads(shown.output)["settings"]
        assert (setting["backend_slug"], setting["engine"], setting["fraction"]) == ("celery-main", "prefect", 0.25)
        refused = runner.invoke(app, ["shadow", "set", "--backend", "nope", "--fraction", "0.5"])
        assert refused.exit_code == 1 and "not found" in refused.output
        assert runner.invoke(app, ["compare", "summary"]).exit_code == 0
    finally:
        get_settings.cache_clear()


# -------------------------------------------------------------------------------------------------- replay
def test_replay_runs_finished_jobs_again_as_shadow_legs_and_resumes(gw: TwoEngines) -> None:
    replay_case(gw)


def test_replay_on_postgres(memory_gateway_pg: MemoryGateway) -> None:
    replay_case(TwoEngines(memory_gateway_pg))


def replay_case(gw: TwoEngines) -> None:
    from gateway.jobs.replay import ReplayRequest, replay

    celery, prefect = gw.engines["celery"], gw.engines["prefect"]

    async def test(state: GatewayState) -> None:
        rows = []
        for i in range(3):
            row, legs = await submitted(state, f"c{i}")
            celery.succeed(legs["primary"].id, legacy_report({"test_a": "PASSED"}))
            rows.append(row)
        _open, _legs = await submitted(state, "still-running")  # not finished: not replayed
        await state.reconciler.tick()
        request = ReplayRequest(engine="prefect", content="cc-main", limit=2, rate=0)
        first = [step async for step in replay(state, request)]
        assert [s.result_id for s in first] == [rows[0].id, rows[1].id]
        again = [step async for step in replay(state, ReplayRequest(engine="prefect", backend="celery-main", rate=0))]
        assert [s.result_id for s in again] == [rows[2].id]  # resumed: the two replayed jobs are not sent twice
        for step in first + again:
            assert step.leg_id is not None and prefect.runs[step.leg_id].job.shadow
            prefect.succeed(step.leg_id, legacy_report({"test_a": "FAILED" if step is again[0] else "PASSED"}))
        await state.reconciler.tick()
        found = {c.result_id: (c.kind, c.outcome) for c in await comparisons(state)}
        assert found == {
            rows[0].id: ("replay", "match"),
            rows[1].id: ("replay", "match"),
            rows[2].id: ("replay", "mismatch"),
        }
        assert {(await row_of(state, r.id)).result for r in rows} == {1.0}  # rows untouched

    gw.run(test)


def test_admin_rule_overrides_apply_to_the_next_comparison_and_bad_ones_are_refused(gw: TwoEngines) -> None:
    from gateway.jobs.errors import BadJobRequest
    from gateway.jobs.shadow_admin import get_compare_rules, put_compare_rules

    celery, prefect = gw.engines["celery"], gw.engines["prefect"]

    async def test(state: GatewayState) -> None:
        await shadow_on(state)
        with pytest.raises(BadJobRequest, match="unknown"):
            await put_compare_rules(state.sessions, {"ignore_everything": True}, "u-admin")
        overrides = {"ignore_paths": ["$.tests[*].tests[*].resultMessage"]}
        await put_compare_rules(state.sessions, overrides, "u-admin")
        assert await get_compare_rules(state.sessions) == overrides
        _row, legs = await submitted(state, "c1")
        celery.succeed(legs["primary"].id, legacy_report({"test_a": "FAILED"}, "expected 1, got 2"))
        prefect.succeed(legs["shadow:prefect"].id, legacy_report({"test_a": "FAILED"}, "AssertionError: 1 != 2"))
        await state.reconciler.tick()
        assert [c.outcome for c in await comparisons(state)] == ["match"]

    gw.run(test)
