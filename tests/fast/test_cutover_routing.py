"""Cutover in the gateway, engine-free: configs under Alembic, routing by stage with its record, pinning across a
rollback (every job finishes on the engine it was admitted to), dry runs that change nothing, stale changes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from backends.memory.adapter import MemoryAdapter, MemoryEngine
from common.legacy import ResultStatus
from gateway.cutover.buckets import bucket, in_canary
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope, Stage
from gateway.engines.dispatcher import Dispatcher
from gateway.jobs import cutover_changes as service
from gateway.jobs.bootstrap import start_gateway
from gateway.jobs.errors import JobError
from gateway.jobs.submit import submit_test
from gateway.runtime import GatewayState
from gateway.store import cutover_configs as store
from gateway.store.models import CourseMember, CutoverEvent, CutoverMigration, Leg, Result
from tests.fast.conftest import ADMIN, MemoryGateway, body, report

pytestmark = pytest.mark.fast

PREFECT_CONTENT = "week2/ex1"  # cc-prefect on the prefect-main backend


def two_engines(
    gateway: MemoryGateway, test: Callable[[GatewayState, dict[str, MemoryEngine]], Awaitable[None]]
) -> None:
    """Each engine name gets its own scripted engine, so a leg can only finish where it was sent."""
    engines = {"celery": MemoryEngine(), "prefect": MemoryEngine()}
    adapters = {name: MemoryAdapter(name, engine) for name, engine in engines.items()}
    dispatcher = Dispatcher(gateway.settings, adapter_factory=lambda name, _settings: adapters[name])

    async def main() -> None:
        state = start_gateway(gateway.settings, dispatcher)
        try:
            await test(state, engines)
        finally:
            await state.close()

    asyncio.run(main())


async def add_members(state: GatewayState, count: int) -> list[str]:
    ids = [f"m-{i:03d}" for i in range(count)]
    async with state.sessions() as session, session.begin():
        for member_id in ids:
            session.add(CourseMember(id=member_id, user_id=f"u-{member_id}", repository_url="file:///x"))
    return ids


async def legs_of(state: GatewayState, row_id: str, role: str = "primary") -> list[Leg]:
    async with state.sessions() as session:
        stmt = select(Leg).where(Leg.result_id == row_id, Leg.role == role)
        return list((await session.execute(stmt)).scalars())


def test_no_migration_routes_exactly_as_before(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body("c1", content=PREFECT_CONTENT))
        (leg,) = await legs_of(state, row.id)
        assert leg.engine == "prefect"
        assert leg.routing is not None and leg.routing.pop("shadow") == {"skipped": "shadowing_off"}
        assert leg.routing == {
            "rule": "execution_backend.type",
            "type": "prefect",
            "execution_backend_id": row.execution_backend_id,
        }

    memory_gateway.run(test)


def test_canary_routes_by_sticky_bucket_and_records_the_decision(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        members = await add_members(state, 40)
        done = await service.change_migration(
            state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin", new_engine="celery",
            stage=Stage.CANARY, percentage=50, reason="first canary",
        )  # fmt: skip
        salt = done.change.after.salt
        for member in members:
            row, _ = await submit_test(state, ADMIN, body("c1", content=PREFECT_CONTENT, member=member))
            (leg,) = await legs_of(state, row.id)
            b = bucket(salt, "cc-prefect", member)
            expected = "celery" if in_canary(b, 50) else "prefect"
            assert leg.engine == expected
            assert leg.routing is not None
            assert {k: leg.routing[k] for k in ("stage", "percentage", "bucket", "config_version")} == {
                "stage": "canary", "percentage": 50.0, "bucket": b, "config_version": 1,
            }  # fmt: skip
            assert leg.routing["rule"] == (
                "stage:canary:in_bucket" if expected == "celery" else "stage:canary:out_of_bucket"
            )
            assert leg.routing["shadow_engine"] == ("prefect" if expected == "celery" else "celery")
            # The stage's shadow (fraction 1 by default) runs the same job on the other engine.
            (shadow,) = await legs_of(state, row.id, "shadow")
            assert shadow.engine == leg.routing["shadow_engine"]
        engines = {leg.engine for row in await all_rows(state) for leg in await legs_of(state, row.id)}
        assert engines == {"celery", "prefect"}  # 40 members at 50 %: both sides are used

    memory_gateway.run(test)


async def all_rows(state: GatewayState) -> list[Result]:
    async with state.sessions() as session:
        return list((await session.execute(select(Result))).scalars())


def test_a_content_override_wins_over_its_backend(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await service.change_migration(state.sessions, Scope.BACKEND, "prefect-main", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.NEW_ONLY)  # fmt: skip
        row, _ = await submit_test(state, ADMIN, body("c1", content=PREFECT_CONTENT))
        assert [leg.engine for leg in await legs_of(state, row.id)] == ["celery"]
        await service.change_migration(state.sessions, Scope.CONTENT, "week2.ex1", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.OLD_ONLY)  # fmt: skip
        row, _ = await submit_test(state, ADMIN, body("c2", content=PREFECT_CONTENT))
        (leg,) = await legs_of(state, row.id)
        assert (leg.engine, leg.routing["config_scope"] if leg.routing else None) == ("prefect", "content")

    memory_gateway.run(test)


def test_rollback_with_jobs_in_flight_on_both_engines_pins_every_job(memory_gateway: MemoryGateway) -> None:
    """Jobs admitted in canary on either engine finish there after a rollback; their ids keep resolving."""

    async def test(state: GatewayState, engines: dict[str, MemoryEngine]) -> None:
        members = await add_members(state, 30)
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.CANARY, percentage=50)  # fmt: skip
        admitted: dict[str, str] = {}  # row id -> engine it was admitted to
        for member in members:
            row, _ = await submit_test(state, ADMIN, body("c1", content=PREFECT_CONTENT, member=member))
            (leg,) = await legs_of(state, row.id)
            admitted[row.id] = leg.engine
        assert set(admitted.values()) == {"celery", "prefect"}
        rolled = await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.ROLLBACK,
                                                "admin", reason="mismatches")  # fmt: skip
        assert rolled.applied and rolled.change.after.stage == Stage.OLD_ONLY
        # A job admitted after the rollback goes to the old engine only.
        late, _ = await submit_test(state, ADMIN, body("c2", content=PREFECT_CONTENT, member=members[0]))
        assert [leg.engine for leg in await legs_of(state, late.id)] == ["prefect"]
        # Every leg in flight (primaries and the stage's shadows, on both engines) finishes where it was sent:
        # each scripted engine knows only the legs sent to it.
        await state.reconciler.relay.flush_now()  # the shadow legs are sent by the reconciler, after the answer
        async with state.sessions() as session:
            legs = {leg.id: leg.engine for leg in (await session.execute(select(Leg))).scalars()}
        for name, engine in engines.items():
            assert set(engine.runs) == {leg_id for leg_id, e in legs.items() if e == name}
            for leg_id in engine.runs:
                engine.succeed(leg_id, report(1, 1))
        await state.reconciler.tick()
        async with state.sessions() as session:
            after = {leg.id: leg for leg in (await session.execute(select(Leg))).scalars()}
        assert {leg_id: leg.engine for leg_id, leg in after.items()} == legs  # nothing re-routed
        assert all(leg.finished for leg in after.values())
        for row in await all_rows(state):
            assert row.status == int(ResultStatus.COMPLETED), row.id
            (leg,) = await legs_of(state, row.id)
            assert leg.id == row.test_system_id and (row.id not in admitted or leg.engine == admitted[row.id])

    two_engines(memory_gateway, test)


def test_dry_run_changes_nothing_and_previews_members(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        members = await add_members(state, 20)
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.SHADOW)  # fmt: skip
        before = await snapshot(state)
        dry = await service.change_migration(
            state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
            stage=Stage.CANARY, percentage=25, dry_run=True, members=members[:5], sample=20,
        )  # fmt: skip
        assert not dry.applied and dry.change.after.version == 2
        assert await snapshot(state) == before
        previewed = {p.course_member_id: p for p in dry.preview}
        assert set(members) <= set(previewed)
        for member, placement in previewed.items():
            moves = in_canary(bucket(dry.change.after.salt, "cc-prefect", member), 25)
            assert (placement.before, placement.after, placement.moves) == (
                "prefect", "celery" if moves else "prefect", moves,
            )  # fmt: skip
        row, _ = await submit_test(state, ADMIN, body("c1", content=PREFECT_CONTENT, member=members[0]))
        assert [leg.engine for leg in await legs_of(state, row.id)] == ["prefect"]  # still shadow stage

    memory_gateway.run(test)


async def snapshot(state: GatewayState) -> tuple[Any, ...]:
    async with state.sessions() as session:
        rows = [(r.stage, r.percentage, r.version) for r in (await session.execute(select(CutoverMigration))).scalars()]
        events = await session.scalar(select(func.count(CutoverEvent.id)))
    return tuple(rows), events


def test_every_change_is_an_event_and_stale_changes_are_refused(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        first = await service.change_migration(state.sessions, Scope.BACKEND, "prefect-main", Action.SET, "alice",
                                               new_engine="celery", stage=Stage.SHADOW, reason="go")  # fmt: skip
        await service.change_migration(state.sessions, Scope.BACKEND, "prefect-main", Action.PROMOTE, "bob",
                                       reason="parity fine")  # fmt: skip
        with pytest.raises(JobError) as stale:
            await service.change_migration(state.sessions, Scope.BACKEND, "prefect-main", Action.PROMOTE, "carol",
                                           expected_version=1)  # fmt: skip
        assert stale.value.status_code == 409
        with pytest.raises(store.StaleChange):  # a change planned on version 1 cannot land on version 2
            await store.save_change(state.sessions, first.change, "mallory")
        with pytest.raises(JobError) as invalid:
            await service.change_migration(state.sessions, Scope.BACKEND, "prefect-main", Action.SET, "carol",
                                           stage=Stage.CANARY, percentage=0)  # fmt: skip
        assert invalid.value.status_code == 422
        with pytest.raises(JobError) as missing:
            await service.change_migration(state.sessions, Scope.BACKEND, "nope", Action.PROMOTE, "carol")
        assert missing.value.status_code == 404
        events = await store.history(state.sessions, Scope.BACKEND, first.change.after.scope_id)
        assert [(e.version, e.actor, e.action, e.from_stage, e.to_stage, e.reason) for e in events] == [
            (2, "bob", "promote", "shadow", "canary", "parity fine"),
            (1, "alice", "set", None, "shadow", "go"),
        ]

    memory_gateway.run(test)
