"""`/metrics` and retention against the in-memory engine: the counts that happened, the backlog, the prune."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from gateway.api.metrics import MetricsView
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope, Stage
from gateway.jobs import cutover_changes
from gateway.jobs.shadow_admin import set_shadow
from gateway.jobs.submit import submit_test
from gateway.legs.states import LegOutcome
from gateway.runtime import GatewayState
from gateway.store import retention
from gateway.store.models import Leg, Result, utcnow
from tests.fast.conftest import ADMIN, MemoryGateway, body, report

pytestmark = pytest.mark.fast


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_follow_sends_and_finishes_and_the_snapshot_follows_the_store(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine
    accepted = ("gateway_engine_sends_total", (("engine", "celery"), ("outcome", "accepted")))
    deferred = ("gateway_engine_sends_total", (("engine", "celery"), ("outcome", "deferred")))
    succeeded = ("gateway_legs_finished_total", (("engine", "celery"), ("role", "primary"), ("outcome", "succeeded")))
    failed = ("gateway_legs_finished_total", (("engine", "celery"), ("role", "primary"), ("outcome", "failed")))
    Key = tuple[str, tuple[tuple[str, str], ...]]

    def value(key: Key) -> float:
        return sample(key[0], **dict(key[1]))

    before = {key: value(key) for key in (accepted, deferred, succeeded, failed)}

    def delta(key: Key) -> float:
        return value(key) - before[key]

    async def test(state: GatewayState) -> None:
        view = MetricsView(state)
        view.ttl = 0  # every render reads the store again
        rows = [(await submit_test(state, ADMIN, body(f"m{i}")))[0] for i in range(3)]
        engine.down = True
        waiting = [(await submit_test(state, ADMIN, body(f"d{i}")))[0] for i in range(2)]
        assert (delta(accepted), delta(deferred)) == (3, 2)
        seen = scraped(await view.render())
        assert seen[("gateway_outbox_backlog", (("engine", "celery"),))] == 2
        assert seen[("gateway_outbox_oldest_age_seconds", (("engine", "celery"),))] > 0
        assert seen[("gateway_legs_in_flight", (("engine", "celery"), ("phase", "queued"), ("role", "primary")))] == 3
        assert seen[("gateway_queue_depth_readable", (("engine", "celery"),))] == 0  # the engine is down
        engine.down = False
        engine.succeed(rows[0].test_system_id, report(2, 2))
        engine.fail(rows[1].test_system_id, "boom")
        async with state.sessions() as session, session.begin():  # due now rather than after the grace period
            await session.execute(update(Leg).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        await state.reconciler.tick()
        assert (delta(accepted), delta(succeeded), delta(failed)) == (5, 1, 1)
        async with state.sessions() as session, session.begin():  # what apply_state notes for a Late run
            await session.execute(update(Leg).where(Leg.id == rows[2].test_system_id).values(last_error="Late"))
        seen = scraped(await view.render())
        assert seen[("gateway_outbox_backlog", (("engine", "celery"),))] == 0
        assert seen[("gateway_legs_in_flight", (("engine", "celery"), ("phase", "queued"), ("role", "primary")))] == 3
        assert seen[("gateway_queue_depth", (("engine", "celery"), ("queue", "default")))] == 3
        assert seen[("gateway_legs_stalled", (("engine", "celery"),))] == 1
        finished = (("engine", "celery"), ("outcome", "succeeded"), ("role", "primary"))
        assert seen[("gateway_legs_finished_total", finished)] >= 1
        assert seen[("gateway_reconciler_batch_legs_count", (("step", "flush"),))] >= 1
        assert len(waiting) == 2
        # No label carries an id: every label value of every gateway series comes from a small vocabulary.
        ids = {row.id for row in rows + waiting} | {row.test_system_id for row in rows + waiting}
        assert not {value for key in seen for _, value in key[1]} & ids

    memory_gateway.run(test)


def test_comparisons_count_by_outcome_and_the_cutover_stage_is_a_gauge(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine
    pair = {"kind": "shadow", "primary_engine": "celery", "shadow_engine": "prefect"}
    before = {o: sample("gateway_comparisons_total", **pair, outcome=o) for o in ("match", "mismatch")}
    backend = ("gateway_cutover_stage", (("new_engine", "prefect"), ("old_engine", "celery"),
                                         ("scope", "backend"), ("target", "celery-main")))  # fmt: skip
    content = ("gateway_cutover_stage", (("new_engine", "celery"), ("old_engine", "prefect"),
                                         ("scope", "content"), ("target", "week2.ex1")))  # fmt: skip

    async def test(state: GatewayState) -> None:
        view = MetricsView(state)
        view.ttl = 0
        values = {"engine": "prefect", "fraction": 1.0}
        await set_shadow(state.sessions, backend="celery-main", content=None, values=values, user_id="u-admin")
        rows = [(await submit_test(state, ADMIN, body(f"s{i}")))[0] for i in range(2)]
        await state.reconciler.relay.flush_now()  # the reconciler sends the shadow legs
        async with state.sessions() as session:
            legs = (await session.execute(select(Leg).order_by(Leg.created_at))).scalars().all()
        by_row = {row.id: {leg.role: leg.id for leg in legs if leg.result_id == row.id} for row in rows}
        for row, shadow_report in zip(rows, (report(2, 2), report(0, 2)), strict=True):  # one match, one mismatch
            engine.succeed(by_row[row.id]["primary"], report(2, 2))
            engine.succeed(by_row[row.id]["shadow"], shadow_report)
        seen = scraped(await view.render())
        assert not [key for key in seen if key[0] == "gateway_cutover_stage"]  # no migration yet: no series
        await state.reconciler.tick()
        moved = {o: sample("gateway_comparisons_total", **pair, outcome=o) - before[o] for o in before}
        assert moved == {"match": 1, "mismatch": 1}
        await cutover_changes.change_migration(state.sessions, Scope.BACKEND, "celery-main", Action.SET, "admin",
                                       new_engine="prefect", stage=Stage.SHADOW)  # fmt: skip
        await cutover_changes.change_migration(state.sessions, Scope.CONTENT, "week2.ex1", Action.SET, "admin",
                                       new_engine="celery", stage=Stage.NEW_ONLY)  # fmt: skip
        seen = scraped(await view.render())
        assert (seen[backend], seen[content]) == (Stage.SHADOW.rank, Stage.NEW_ONLY.rank) == (1, 4)
        match = tuple(sorted({**pair, "outcome": "match"}.items()))
        assert seen[("gateway_comparisons_total", match)] >= 1  # the counters are on the same page
        await cutover_changes.change_migration(state.sessions, Scope.BACKEND, "celery-main", Action.SET, "admin",
                                       stage=Stage.OLD_ONLY)  # fmt: skip
        assert scraped(await view.render())[backend] == 0

    memory_gateway.run(test)


def test_prune_removes_only_finished_legs_past_retention_and_never_a_result_row(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        rows = [(await submit_test(state, ADMIN, body(f"p{i}")))[0] for i in range(5)]
        for row in rows[:4]:
            engine.succeed(row.test_system_id, report(1, 1))
        await state.reconciler.tick()
        now = utcnow()
        legs = [row.test_system_id for row in rows]
        async with state.sessions() as session, session.begin():
            # Two ended 40 days ago, one 10 days ago, one just now; the fifth is still open and 40 days old.
            for leg_id, ended in zip(legs[:4], (40, 40, 10, 0), strict=True):
                await session.execute(
                    update(Leg).where(Leg.id == leg_id).values(finished_at=now - timedelta(days=ended))
                )
            await session.execute(update(Leg).where(Leg.id == legs[4]).values(created_at=now - timedelta(days=40)))
        cutoff = now - timedelta(days=30)
        assert await retention.count_prunable(state.sessions, cutoff) == 2
        assert await retention.prune(state.sessions, cutoff, batch=1) == 2  # batches of one: the loop ends right
        async with state.sessions() as session:
            left = set((await session.execute(select(Leg.id))).scalars())
            results = await session.scalar(select(func.count(Result.id)))
            outcomes = set((await session.execute(select(Leg.outcome).where(Leg.id.in_(legs[2:4])))).scalars())
        assert left == set(legs[2:])
        assert results == 5
        assert outcomes == {LegOutcome.SUCCEEDED}

    memory_gateway.run(test)


def test_the_reconciler_prunes_in_batches_when_retention_is_set(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine
    memory_gateway.settings = memory_gateway.settings.model_copy(
        update={"gateway_retention_days": 1, "gateway_retention_batch": 2}
    )

    async def test(state: GatewayState) -> None:
        rows = [(await submit_test(state, ADMIN, body(f"r{i}")))[0] for i in range(3)]
        for row in rows:
            engine.succeed(row.test_system_id, report(1, 1))
        await state.reconciler.tick()
        async with state.sessions() as session, session.begin():
            await session.execute(update(Leg).values(finished_at=utcnow() - timedelta(days=2)))
        now = utcnow()
        assert await state.reconciler.prune_step(now) == 2  # one small batch per step
        assert await state.reconciler.prune_step(now) == 1  # a full batch: the next step continues at once
        assert await state.reconciler.prune_step(now) == 0  # nothing left: paused for a while
        async with state.sessions() as session:
            assert await session.scalar(select(func.count(Leg.id))) == 0
            assert await session.scalar(select(func.count(Result.id))) == 3

    memory_gateway.run(test)


def test_db_prune_dry_run_counts_and_prune_deletes(memory_gateway: MemoryGateway) -> None:
    """`gateway db prune --dry-run` counts without deleting; without it, exactly those legs go."""
    import subprocess

    from tests.support.celery_worker import GATEWAY_BIN, base_env

    engine = memory_gateway.engine

    async def seed(state: GatewayState) -> None:
        rows = [(await submit_test(state, ADMIN, body(f"c{i}")))[0] for i in range(3)]
        for row in rows:
            engine.succeed(row.test_system_id, report(1, 1))
        await state.reconciler.tick()
        async with state.sessions() as session, session.begin():
            old = utcnow() - timedelta(days=40)
            await session.execute(update(Leg).where(Leg.id != rows[0].test_system_id).values(finished_at=old))

    async def counts(state: GatewayState) -> tuple[int, int]:
        async with state.sessions() as session:
            legs = await session.scalar(select(func.count(Leg.id)))
            results = await session.scalar(select(func.count(Result.id)))
        return int(legs or 0), int(results or 0)

    memory_gateway.run(seed)
    env = base_env({}, memory_gateway.settings.data_dir)

    def prune(*args: str) -> str:
        done = subprocess.run(
            [str(GATEWAY_BIN), "db", "prune", "--older-than-days", "30", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert prune("--dry-run").startswith("would delete 2 finished legs")
    assert memory_gateway.run(counts) == (3, 3)
    assert prune().startswith("deleted 2 finished legs")
    assert memory_gateway.run(counts) == (1, 3)
