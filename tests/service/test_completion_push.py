"""On a real Celery worker (Redis broker, PostgreSQL results): legs that ended are final without any client read,
within two reconciler cycles by polling alone, and with no cycle at all when the result store's notice is pushed.

Legs that never change: their tasks wait in `high_priority`, a queue the worker does not consume. The ones that
finish: a no-op task under the same leg id on `default`, which it does. No sleeps: the tests wait on the result
store's own notices and on the reconciler's counters, and count cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backends.celery import names
from backends.celery.adapter import CeleryAdapter
from common.legacy import ResultStatus
from common.settings import Settings
from gateway.jobs.bootstrap import start_gateway
from gateway.jobs.submit import submit_test
from gateway.runtime import GatewayState
from gateway.store.catalog import load_catalog
from gateway.store.migrate import upgrade
from gateway.store.models import Result
from tests.fast.conftest import ADMIN, body, catalog
from tests.service.conftest import fresh_pg_database
from tests.support.celery_worker import base_env, running_worker, settings_from_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

IN_FLIGHT, FINISHING = 30, 20


@pytest.fixture(scope="module")
def settings(postgres_db: Any, redis_db: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    data: Path = tmp_path_factory.mktemp("push")
    with fresh_pg_database(postgres_db) as db:
        env = base_env({**db.env(), **redis_db.env(), "GATEWAY_CATALOG_CACHE_SECONDS": "60"}, data)
        settings = settings_from_env(env)
        upgrade(settings)
        load_catalog(catalog(), settings)
        with running_worker(env, queues=(names.DEFAULT,), concurrency=2):
            try:
                yield settings
            finally:
                # The never-changing legs' messages must not reach another module's worker on this Redis db.
                adapter = CeleryAdapter(settings)
                adapter.app.control.purge()
                adapter.close()


def run(settings: Settings, test: Any) -> Any:
    async def main() -> Any:
        state = start_gateway(settings)
        try:
            return await test(state)
        finally:
            await state.close()

    return asyncio.run(main())


async def submit_and_finish_some(state: GatewayState, prefix: str) -> tuple[list[Result], list[Result]]:
    """IN_FLIGHT runs through the submit path (all SCHEDULED) and sent by the outbox relay (as the woken
    reconciler does), then a no-op under each of the last FINISHING ids."""
    rows = [(await submit_test(state, ADMIN, body(f"{prefix}-{i}")))[0] for i in range(IN_FLIGHT)]
    sent = 0
    while sent < IN_FLIGHT:  # flushes of at most the reconciler's batch size
        dispatched = (await state.reconciler.relay.flush_now()).dispatched
        assert dispatched > 0, f"the relay sent {sent} of {IN_FLIGHT} legs, then none"
        sent += dispatched
    adapter = state.dispatcher.adapter("celery")
    assert isinstance(adapter, CeleryAdapter)
    for row in rows[IN_FLIGHT - FINISHING :]:
        adapter.send(names.NOOP, {"payload": {"row": row.id}}, row.test_system_id)
    return rows[: IN_FLIGHT - FINISHING], rows[IN_FLIGHT - FINISHING :]


async def statuses(state: GatewayState, rows: list[Result]) -> Counter[int]:
    async with state.sessions() as session:
        found = (await session.execute(select(Result.status).where(Result.id.in_([r.id for r in rows])))).scalars()
        return Counter(found)


def test_finished_legs_are_final_within_two_cycles_by_polling_alone(settings: Settings) -> None:
    async def test(state: GatewayState) -> None:
        state.reconciler.batch_size = 7  # several batches: the unchanged legs must not hide the finished ones
        adapter = state.dispatcher.adapter("celery")
        assert isinstance(adapter, CeleryAdapter)
        # The worker's own notices tell when all of them are stored (the reconciler does not follow them here).
        feed = adapter.completions()
        assert await anext(feed) == []
        unchanged, finishing = await submit_and_finish_some(state, "poll")
        waiting = {row.test_system_id for row in finishing}
        async with asyncio.timeout(60):
            while waiting:
                waiting -= set(await anext(feed))
        await feed.aclose()
        cycles = 0
        while (await statuses(state, finishing))[int(ResultStatus.COMPLETED)] < FINISHING and cycles < 5:
            await state.reconciler.tick()
            cycles += 1
        assert cycles <= 2
        assert await statuses(state, finishing) == {int(ResultStatus.COMPLETED): FINISHING}
        assert await statuses(state, unchanged) == {int(ResultStatus.SCHEDULED): IN_FLIGHT - FINISHING}
        assert state.reconciler.completions.pushed_finished == 0

    run(settings, test)


def test_pushed_completions_finish_legs_with_no_cycle(settings: Settings) -> None:
    async def test(state: GatewayState) -> None:
        stop = asyncio.Event()
        following = asyncio.create_task(state.reconciler.completions.follow(stop))
        try:
            assert await state.reconciler.completions.wait_following("celery", timeout=30)
            unchanged, finishing = await submit_and_finish_some(state, "push")
            assert await state.reconciler.completions.wait_pushed(FINISHING, timeout=60) == FINISHING
        finally:
            stop.set()
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        # No tick ran in this test: the notices alone finished them, and only them.
        assert await statuses(state, finishing) == {int(ResultStatus.COMPLETED): FINISHING}
        assert await statuses(state, unchanged) == {int(ResultStatus.SCHEDULED): IN_FLIGHT - FINISHING}

    run(settings, test)
