"""The fast layer: the gateway's state machine, reconciler and submit rules against the in-memory engine.

No Celery, no Prefect, no HTTP: a `GatewayState` on a temporary SQLite store (or a fresh PostgreSQL database
where the test is about row locks) whose dispatcher hands out `MemoryAdapter`s. Every module here is marked
`fast` (`pytestmark`); `./scripts/test.sh -m fast` runs them alone in seconds.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from backends.memory.adapter import MemoryAdapter, MemoryEngine
from common.settings import Settings
from gateway.engines.dispatcher import Dispatcher
from gateway.jobs.bootstrap import start_gateway
from gateway.runtime import GatewayState
from gateway.schemas import TestCreate
from gateway.store.accounts import Principal
from gateway.store.catalog import load_catalog
from gateway.store.migrate import upgrade
from gateway.store.models import Leg, Result
from tests.service.conftest import demo_catalog, fresh_pg_database
from tests.support.celery_worker import settings_from_env

ADMIN = Principal("u-admin", "admin", "admin")
T = TypeVar("T")


def catalog() -> dict[str, Any]:
    """The gateway tests' catalog plus a Prefect backend and content, so both engine names are routed."""
    data = demo_catalog()
    data["execution_backends"].append({"slug": "prefect-main", "type": "prefect", "properties": {}})
    data["course_contents"].append(
        {"id": "cc-prefect", "path": "week2.ex1", "directory": "week2/ex1", "execution_backend": "prefect-main"}
    )
    return data


@dataclass
class MemoryGateway:
    """A store with the catalog, settings for it, and one scripted engine behind both engine names."""

    settings: Settings
    engine: MemoryEngine

    def dispatcher(self) -> Dispatcher:
        adapters = {name: MemoryAdapter(name, self.engine) for name in ("celery", "prefect")}
        return Dispatcher(self.settings, adapter_factory=lambda name, _settings: adapters[name])

    def run(self, test: Callable[[GatewayState], Awaitable[T]]) -> T:
        """Run `test` on a gateway state of its own (one event loop, closed afterwards)."""

        async def main() -> T:
            state = start_gateway(self.settings, self.dispatcher())
            try:
                return await test(state)
            finally:
                await state.close()

        return asyncio.run(main())


def _gateway(env: dict[str, str]) -> MemoryGateway:
    settings = settings_from_env({**env, "GATEWAY_CATALOG_CACHE_SECONDS": "60"})
    upgrade(settings)
    load_catalog(catalog(), settings)
    return MemoryGateway(settings, MemoryEngine())


@pytest.fixture(scope="session")
def seeded_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The migrated, seeded SQLite store, made once per session: each test starts from a copy of the file."""
    folder = tmp_path_factory.mktemp("seeded")
    _gateway({"GATEWAY_DATA_DIR": str(folder)})
    return folder / "gateway.sqlite"


@pytest.fixture
def memory_gateway(tmp_path: Path, seeded_sqlite: Path) -> MemoryGateway:
    shutil.copyfile(seeded_sqlite, tmp_path / seeded_sqlite.name)
    settings = settings_from_env({"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_CATALOG_CACHE_SECONDS": "60"})
    return MemoryGateway(settings, MemoryEngine())


@pytest.fixture(scope="session")
def seeded_pg(tmp_path_factory: pytest.TempPathFactory, postgres_db: Any) -> Iterator[Any]:
    """The migrated, seeded PostgreSQL store, made once per session: each test's database is created from it as
    a template (the PostgreSQL twin of `seeded_sqlite`; the migrations are most of a fresh store's cost)."""
    with fresh_pg_database(postgres_db) as db:
        _gateway({"GATEWAY_DATA_DIR": str(tmp_path_factory.mktemp("seeded-pg")), **db.env()})
        yield db


@pytest.fixture
def memory_gateway_pg(tmp_path: Path, postgres_db: Any, seeded_pg: Any) -> Iterator[MemoryGateway]:
    with fresh_pg_database(postgres_db, template=seeded_pg) as db:
        env = {"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_CATALOG_CACHE_SECONDS": "60", **db.env()}
        yield MemoryGateway(settings_from_env(env), MemoryEngine())


def body(commit: str, content: str = "week1/ex1", member: str = "m-alice", submit: bool = False) -> TestCreate:
    return TestCreate(directory=content, course_member_id=member, version_identifier=commit, submit=submit)


def report(passed: int, total: int) -> dict[str, Any]:
    """The smallest report the gateway scores: the legacy summary."""
    return {"summary": {"total": total, "passed": passed, "failed": total - passed}, "result": "PASSED"}


async def leg_and_row(state: GatewayState, leg_id: str, row_id: str) -> tuple[Leg, Result]:
    """A leg and its job's row as they are stored now (a fresh session: what the last commit left)."""
    async with state.sessions() as session:
        leg = await session.get(Leg, leg_id)
        row = await session.get(Result, row_id)
    assert leg is not None and row is not None
    return leg, row
