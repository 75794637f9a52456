"""The worker's STARTED store tells whether the id already succeeded, so a task skips its own "already done?"
read when it did not (one database round trip less per job); on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.celery.factory import create_app
from tests.gateway.conftest import fresh_pg_database
from tests.support.celery_worker import settings_from_env

pytestmark = pytest.mark.fast


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    env = {"GATEWAY_DATA_DIR": str(tmp_path), "CELERY_BROKER_URL": f"filesystem://{tmp_path}/broker"}
    if request.param == "sqlite":
        app = create_app(settings_from_env(env))
        yield app.backend
        app.close()
        return
    with fresh_pg_database(request.getfixturevalue("postgres_db")) as db:
        app = create_app(settings_from_env({**env, **db.env()}))
        yield app.backend
        app.backend.engine().dispose()
        app.close()


def test_started_over_a_success_is_known_and_changes_nothing(backend: Any) -> None:
    backend.store_result("done", {"report": 1}, "SUCCESS")
    backend.store_result("done", {"pid": 1}, "STARTED")
    backend.store_result("new", {"pid": 1}, "STARTED")

    assert backend.started_over_success("done") is True
    assert backend.get_task_meta("done")["status"] == "SUCCESS"  # the stored SUCCESS stays
    assert backend.started_over_success("new") is False
    assert backend.started_over_success("new") is None  # read once
    assert backend.started_over_success("never-started") is None
