"""Real Celery workers for the Celery tests: one per stack (Redis+PostgreSQL, embedded default), per module.

Each worker is a `gateway worker start` subprocess with its own environment, stopped by process group.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backends.celery.adapter import CeleryAdapter
from backends.interface import LegState
from tests.support.celery_worker import (
    TEST_TASKS_MODULE,
    WorkerProcess,
    base_env,
    running_worker,
    settings_from_env,
)


def wait_for(
    adapter: CeleryAdapter, leg_id: str, predicate: Callable[[LegState], bool], timeout: float = 60.0
) -> LegState:
    """Poll one leg until `predicate` holds, with a deadline (the adapter's poll is the condition)."""
    import time

    deadline = time.monotonic() + timeout
    state = adapter.poll([leg_id])[leg_id]
    while not predicate(state):
        if time.monotonic() > deadline:
            raise AssertionError(f"{leg_id} stuck in {state}")
        time.sleep(0.05)  # polling interval of a deadline loop
        state = adapter.poll([leg_id])[leg_id]
    return state


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def pg_redis_env(postgres_db, redis_db, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return base_env({**postgres_db.env(), **redis_db.env()}, tmp_path_factory.mktemp("celery-pg"))


@pytest.fixture(scope="module")
def pg_worker(pg_redis_env: dict[str, str]) -> Iterator[WorkerProcess]:
    with running_worker(pg_redis_env, concurrency=2, include=[TEST_TASKS_MODULE]) as worker:
        yield worker


@pytest.fixture(scope="module")
def pg_adapter(pg_redis_env: dict[str, str]) -> Iterator[CeleryAdapter]:
    adapter = CeleryAdapter(settings_from_env(pg_redis_env))
    yield adapter
    adapter.close()


@pytest.fixture(scope="module")
def embedded_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return base_env({}, tmp_path_factory.mktemp("celery-embedded"))


@pytest.fixture
def release_file(tmp_path: Path) -> Path:
    """Creating this file lets a `block_until` task finish."""
    return tmp_path / f"release-{uuid.uuid4().hex[:6]}"
