"""The worker's STARTED store tells whether the id already succeeded, so a task skips its own "already done?"
read when it did not (one database round trip less per job); on SQLite and on PostgreSQL."""

from __future__ import annotations

import select
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.celery.factory import create_app
from tests.service.conftest import fresh_pg_database
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


def _row(backend: Any, task_id: str) -> dict[str, Any]:
    from backends.celery.taskmeta import TaskMetaReader

    reader = TaskMetaReader(backend.url)
    try:
        return dict(reader.fetch([task_id])[task_id].__dict__)
    finally:
        reader.dispose()


def test_every_store_writes_the_whole_row_and_never_over_a_success(backend: Any) -> None:
    """The prebuilt upsert: a later state replaces every column (extended ones included, kwargs scrubbed); a
    stored SUCCESS is never replaced, whatever comes after it."""
    from celery.app.task import Context

    request = Context(id="t", task="ctutor.x", args=[1], kwargs={"token": "s3cret", "n": 2}, hostname="w@h",
                      retries=0, delivery_info={"routing_key": "default"})  # fmt: skip
    backend.store_result("t", {"pid": 1}, "STARTED", request=request)
    backend.store_result("t", {"progress": {"percentage": 30}}, "PROGRESS", request=request)
    row = _row(backend, "t")
    assert (row["status"], row["result"]) == ("PROGRESS", {"progress": {"percentage": 30}})
    extended = (row["name"], row["args"], row["worker"], row["retries"], row["queue"])
    assert extended == ("ctutor.x", [1], "w@h", 0, "default")
    assert row["kwargs"]["n"] == 2 and row["kwargs"]["token"] != "s3cret"

    backend.store_result("t", {"score": 1.0}, "SUCCESS", request=request)
    backend.store_result("t", {"progress": {"percentage": 95}}, "PROGRESS", request=request)
    backend.store_result("t", {"exc_type": "X", "exc_message": ["late"]}, "FAILURE", request=request)
    row = _row(backend, "t")
    assert (row["status"], row["result"]) == ("SUCCESS", {"score": 1.0})


def test_a_final_store_announces_the_committed_row_once(postgres_db: Any, tmp_path: Path) -> None:
    """PostgreSQL: the final store's NOTIFY carries the task id; a repeat over the stored SUCCESS sends none."""
    import psycopg2

    env = {"GATEWAY_DATA_DIR": str(tmp_path), "CELERY_BROKER_URL": f"filesystem://{tmp_path}/broker"}
    with fresh_pg_database(postgres_db) as db:
        app = create_app(settings_from_env({**env, **db.env()}))
        backend = app.backend
        backend.engine()
        listener = psycopg2.connect(backend.url.replace("postgresql+psycopg2", "postgresql"))
        try:
            listener.autocommit = True
            with listener.cursor() as cur:
                cur.execute("LISTEN ctutor_task_final")
            backend.store_result("a", {"pid": 1}, "STARTED")
            backend.store_result("a", {"progress": {"percentage": 1}}, "PROGRESS")
            backend.store_result("a", {"score": 1.0}, "SUCCESS")
            backend.store_result("a", {"score": 0.0}, "SUCCESS")
            # A marker sent after the stores arrives after anything they sent: PostgreSQL delivers in commit order.
            with backend.engine().begin() as connection:
                connection.exec_driver_sql("NOTIFY ctutor_task_final, 'end'")
            payloads: list[str] = []
            while "end" not in payloads:
                assert select.select([listener], [], [], 30)[0], payloads
                listener.poll()
                payloads.extend(n.payload for n in listener.notifies)
                listener.notifies.clear()
            assert payloads == ["a", "end"]
        finally:
            listener.close()
            backend.engine().dispose()
            app.close()
