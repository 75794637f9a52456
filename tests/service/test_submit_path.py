"""The fast submit path in-process, on both stores: the optimistic insert, its conflict path and the catalog cache.

`submit_test` runs against a real database (a fresh PostgreSQL one, or the embedded SQLite file) and a real
Celery adapter on the embedded filesystem broker; no worker runs, the messages just queue.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg2
import pytest
from sqlalchemy import func, select

from gateway.jobs.errors import JobError
from gateway.jobs.submit import submit_test
from gateway.runtime import GatewayState
from gateway.schemas import TestCreate
from gateway.store.accounts import Principal
from gateway.store.catalog import load_catalog
from gateway.store.migrate import upgrade
from gateway.store.models import CourseContent, Leg, Result
from tests.service.conftest import demo_catalog, fresh_pg_database
from tests.support.celery_worker import settings_from_env

ADMIN = Principal("u-admin", "admin", "admin")
MAX_REACHED = "Reached max submissions for this course_content"
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings variables for a fresh store holding the demo catalog."""
    env = {"GATEWAY_DATA_DIR": str(tmp_path)}
    if request.param == "postgres":
        with fresh_pg_database(request.getfixturevalue("postgres_db")) as db:
            env.update(db.env())
            _seed(env)
            yield env
        return
    _seed(env)
    yield env


def _seed(env: dict[str, str]) -> None:
    settings = settings_from_env(env)
    upgrade(settings)
    load_catalog(demo_catalog(), settings)


def _with_state(env: dict[str, str], cache_seconds: float, test: Callable[[GatewayState], Awaitable[T]]) -> T:
    """Run `test` on a gateway state of its own (one event loop, closed afterwards)."""

    async def main() -> T:
        state = GatewayState.build(settings_from_env({**env, "GATEWAY_CATALOG_CACHE_SECONDS": str(cache_seconds)}))
        try:
            return await test(state)
        finally:
            await state.close()

    return asyncio.run(main())


def _body(commit: str, submit: bool = False) -> TestCreate:
    return TestCreate(directory="week1/ex1", course_member_id="m-alice", version_identifier=commit, submit=submit)


def test_identical_submits_racing_make_one_run(store_env: dict[str, str]) -> None:
    async def test(state: GatewayState) -> None:
        answers = await asyncio.gather(*(submit_test(state, ADMIN, _body("race-1")) for _ in range(6)))
        assert sum(new for _row, new in answers) == 1
        assert len({row.id for row, _new in answers}) == 1
        async with state.sessions() as session:
            rows = (await session.execute(select(Result).where(Result.version_identifier == "race-1"))).scalars()
            row = rows.one()
            legs = (await session.execute(select(Leg).where(Leg.result_id == row.id))).scalars().all()
        # One leg, committed with its row under the gateway-chosen id (the row's test_system_id), due at once:
        # Celery's legs are sent by the outbox relay, not by the request.
        assert [leg.id for leg in legs] == [row.test_system_id]
        leg = legs[0]
        assert (leg.role, leg.engine, leg.dispatch_state, leg.dispatch_attempts) == ("primary", "celery", "pending", 0)
        assert leg.next_attempt_at == leg.created_at and leg.engine_run_id is None
        assert leg.spec["params"]["test_job"]["module"]["commit"] == "race-1"
        assert leg.routing == {
            "rule": "execution_backend.type",
            "type": "celery",
            "execution_backend_id": row.execution_backend_id,
            "shadow": {"skipped": "shadowing_off"},  # the shadow decision is recorded too (none configured)
        }
        assert (row.status, row.submit, row.course_content_id, row.created_by) == (3, False, "cc-main", "u-admin")
        # The relay's flush (what the woken reconciler runs) sends it, with the leg id as the Celery task id.
        assert (await state.reconciler.relay.flush_now()).dispatched == 1
        async with state.sessions() as session:
            leg = await session.get(Leg, row.test_system_id)
        assert leg is not None and (leg.dispatch_state, leg.dispatch_attempts) == ("sent", 1)
        assert leg.engine_run_id == leg.id and leg.deadline is not None and leg.next_attempt_at is None

    _with_state(store_env, 60, test)


def test_concurrent_submits_are_each_committed_and_one_relay_flush_sends_them_all(store_env: dict[str, str]) -> None:
    """Each submit answers once its row and leg are committed (due at once, nothing sent by the request); one
    outbox flush then sends every one of them through the real Celery adapter and marks each leg it names with
    that leg's own run id, send time and deadline."""

    async def test(state: GatewayState) -> None:
        answers = await asyncio.gather(*(submit_test(state, ADMIN, _body(f"many-{n}")) for n in range(24)))
        assert all(new for _row, new in answers)
        async with state.sessions() as session:
            legs = {leg.result_id: leg for leg in (await session.execute(select(Leg))).scalars()}
        assert {(leg.dispatch_state, leg.dispatch_attempts) for leg in legs.values()} == {("pending", 0)}
        assert (await state.reconciler.relay.flush_now()).dispatched == 24
        async with state.sessions() as session:
            legs = {leg.result_id: leg for leg in (await session.execute(select(Leg))).scalars()}
        for row, _new in answers:
            leg = legs[row.id]
            assert (leg.id, leg.dispatch_state, leg.dispatch_attempts) == (row.test_system_id, "sent", 1)
            assert leg.engine_run_id == leg.id and leg.next_attempt_at is None
            assert leg.dispatched_at is not None and leg.deadline is not None and leg.deadline > leg.dispatched_at

    _with_state(store_env, 60, test)


def test_an_in_process_catalog_write_takes_effect_at_once(store_env: dict[str, str]) -> None:
    async def test(state: GatewayState) -> None:
        row, new = await submit_test(state, ADMIN, _body("cache-1", submit=True))
        assert new and row.status == 3  # the content (no maximum) is now in the cache for a minute
        async with state.sessions() as session, session.begin():
            content = await session.get(CourseContent, "cc-main")
            assert content is not None
            content.max_submissions = 1  # what the admin API does: an ORM write in this process
        with pytest.raises(JobError) as refused:
            await submit_test(state, ADMIN, _body("cache-2", submit=True))
        assert (refused.value.status_code, refused.value.detail) == (400, MAX_REACHED)
        async with state.sessions() as session:
            count = await session.scalar(select(func.count(Result.id)).where(Result.course_content_id == "cc-main"))
        assert count == 1

    _with_state(store_env, 60, test)


def test_another_process_write_shows_once_the_entry_expires(store_env: dict[str, str]) -> None:
    """A write this process cannot see (here plain SQL, as another process would do) shows after the cache time."""

    async def test(state: GatewayState) -> int:
        assert (await submit_test(state, ADMIN, _body("other-0", submit=True)))[1]
        _external_sql(store_env, "UPDATE course_content SET max_submissions = 1 WHERE id = 'cc-main'")
        deadline = asyncio.get_running_loop().time() + 30
        accepted = 0
        while asyncio.get_running_loop().time() < deadline:
            try:
                await submit_test(state, ADMIN, _body(f"other-{accepted + 1}", submit=True))
            except JobError as exc:
                assert exc.detail == MAX_REACHED
                return accepted
            accepted += 1  # the stale entry (no maximum) still answered
            await asyncio.sleep(0.05)  # polling interval of a deadline loop
        raise AssertionError("the external change never showed")

    _with_state(store_env, 0.3, test)


def test_cache_off_sees_every_write(store_env: dict[str, str]) -> None:
    async def test(state: GatewayState) -> None:
        assert (await submit_test(state, ADMIN, _body("off-0", submit=True)))[1]
        _external_sql(store_env, "UPDATE course_content SET max_submissions = 1 WHERE id = 'cc-main'")
        with pytest.raises(JobError) as refused:
            await submit_test(state, ADMIN, _body("off-1", submit=True))
        assert refused.value.detail == MAX_REACHED

    _with_state(store_env, 0, test)


def _external_sql(env: dict[str, str], sql: str) -> None:
    if "POSTGRES_DB" in env:
        conn = psycopg2.connect(
            host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"], user=env["POSTGRES_USER"], dbname=env["POSTGRES_DB"]
        )
        with conn, conn.cursor() as cur:
            cur.execute(sql)
        conn.close()
        return
    with sqlite3.connect(Path(env["GATEWAY_DATA_DIR"]) / "gateway.sqlite") as conn:
        conn.execute(sql)
