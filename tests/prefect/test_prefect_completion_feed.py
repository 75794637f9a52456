"""On a real Prefect server and runner: the flow runs that end are pushed by Prefect's event stream, and a leg on
the Prefect route is closed with no reconciler tick (as `tests/service/test_completion_push.py` shows for Celery).

No sleeps: the tests wait on the feed's own batches and on the reconciler's counters, and count ticks (none).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backends.interface import CompletionFeed, JobSpec, TaskKind
from backends.prefect.adapter import PrefectAdapter
from common.legacy import ResultStatus
from common.settings import Settings
from gateway.jobs.bootstrap import start_gateway
from gateway.jobs.submit import submit_test
from gateway.runtime import GatewayState
from gateway.store.catalog import load_catalog
from gateway.store.migrate import upgrade
from gateway.store.models import Leg, Result
from tests.fast.conftest import ADMIN, body

pytestmark = pytest.mark.slow

NOOP, FAIL = "gateway-noop/system", "gateway-test-fail/system"


def job(deployment: str) -> JobSpec:
    return JobSpec(kind=TaskKind.STUDENT_TESTING, params={}, properties={"deployment": deployment})


def test_the_event_stream_names_the_runs_that_ended(adapter: PrefectAdapter, prefect_runner: Any) -> None:
    assert isinstance(adapter, CompletionFeed)

    async def test() -> None:
        feed = adapter.completions()
        try:
            assert await anext(feed) == []  # listening
            done, failed = f"feed-ok-{uuid.uuid4().hex[:8]}", f"feed-fail-{uuid.uuid4().hex[:8]}"
            await asyncio.to_thread(adapter.submit, job(NOOP), done)
            await asyncio.to_thread(adapter.submit, job(FAIL), failed)
            waiting = {done, failed}
            async with asyncio.timeout(120):
                while waiting:
                    waiting -= set(await anext(feed))
        finally:
            await feed.aclose()
        states = await asyncio.to_thread(adapter.poll, [done, failed])
        assert states[done].phase.is_final and states[failed].phase.is_final

    asyncio.run(test())


@pytest.fixture
def settings(prefect_settings: Settings, tmp_path: Path) -> Settings:
    """The embedded store in a folder of its own; Prefect (and its results folder) as the session's."""
    settings = Settings(
        prefect_api_url=prefect_settings.prefect_api_url,
        gateway_data_dir=prefect_settings.gateway_data_dir,
        gateway_database_url=f"sqlite:///{tmp_path}/gateway.sqlite",  # type: ignore[arg-type]
    )
    upgrade(settings)
    load_catalog(
        {
            "execution_backends": [{"slug": "prefect-main", "type": "prefect", "properties": {"deployment": NOOP}}],
            "course_contents": [{"id": "cc-prefect", "path": "week2.ex1", "directory": "week2/ex1",
                                 "execution_backend": "prefect-main"}],
            "course_members": [{"id": "m-alice", "user_id": "u-alice", "repository_url": "file:///nonexistent/a"}],
        },
        settings,
    )  # fmt: skip
    return settings


def test_a_prefect_leg_is_final_with_no_reconciler_tick(settings: Settings, prefect_runner: Any) -> None:
    async def test(state: GatewayState) -> None:
        stop = asyncio.Event()
        following = asyncio.create_task(state.reconciler.completions.follow(stop))
        try:
            assert await state.reconciler.completions.wait_following("prefect", timeout=60)
            row, _new = await submit_test(state, ADMIN, body(f"feed-{uuid.uuid4().hex[:8]}", content="week2/ex1"))
            assert await state.reconciler.completions.wait_pushed(1, timeout=120) == 1
        finally:
            stop.set()
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        # No tick ran in this test: Prefect's event alone closed the leg and wrote the row's final status.
        async with state.sessions() as session:
            leg = (await session.execute(select(Leg).where(Leg.result_id == row.id))).scalar_one()
            status = (await session.execute(select(Result.status).where(Result.id == row.id))).scalar_one()
        assert leg.finished
        assert ResultStatus(status) != ResultStatus.SCHEDULED

    async def main() -> None:
        state = start_gateway(settings)
        try:
            await test(state)
        finally:
            await state.close()

    asyncio.run(main())
