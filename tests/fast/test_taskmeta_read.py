"""The lean `celery_taskmeta` read behind every poll (`TaskMetaReader.states`), on SQLite and on PostgreSQL.

It leaves out the results a poll does not need (queued, running, succeeded) and decodes the rest, so a poll must
still see progress, a failure's error and a crash; ids without a row are absent; many ids are one call.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.backends.database.models import TaskExtended
from sqlalchemy import create_engine, insert

from backends.celery.adapter import CeleryAdapter
from backends.celery.taskmeta import TaskMetaReader
from backends.interface import LegPhase
from common.settings import Settings
from tests.service.conftest import fresh_pg_database

pytestmark = pytest.mark.fast


@pytest.fixture(params=["sqlite", "postgresql"])
def result_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    with fresh_pg_database(request.getfixturevalue("postgres_db")) as db:
        yield db.url()


def _rows(url: str, rows: list[dict[str, Any]]) -> None:
    engine = create_engine(url)
    TaskExtended.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(TaskExtended.__table__), rows)
    engine.dispose()


def _row(task_id: str, status: str, result: Any = None, worker: str | None = None) -> dict[str, Any]:
    encoded = None if result is None else json.dumps(result).encode()
    return {"task_id": task_id, "status": status, "result": encoded, "worker": worker, "queue": "testing"}


def test_a_state_read_keeps_what_a_poll_needs(result_url: str) -> None:
    progress = {"progress": {"percentage": 40, "metadata": {}, "status": "running"}}
    crash = {"exc_type": "WorkerLostError", "exc_message": ["lost"]}
    failure = {"exc_type": "ValueError", "exc_message": ["bad input"]}
    _rows(result_url, [
        _row("started", "STARTED", {"pid": 1, "hostname": "w1"}, worker="w1"),
        _row("progress", "PROGRESS", progress, worker="w1"),
        _row("crashed", "FAILURE", crash),
        _row("failed", "FAILURE", failure),
        _row("done", "SUCCESS", {"score": 1.0}),
    ])  # fmt: skip
    reader = TaskMetaReader(result_url)
    try:
        states = reader.states(["started", "progress", "crashed", "failed", "done", "queued", "started"])
    finally:
        reader.dispose()
    assert set(states) == {"started", "progress", "crashed", "failed", "done"}
    # Results a poll does not read are left on the server; those it reads come back decoded.
    assert states["started"].result is None and states["started"].worker == "w1"
    assert states["done"].result is None
    assert states["progress"].result == progress
    assert states["failed"].result == failure

    adapter = CeleryAdapter(Settings())  # only its state mapping is used: nothing is connected
    polled = {task_id: adapter._state(task_id, row.status, row.result) for task_id, row in states.items()}
    assert polled["started"].phase is LegPhase.RUNNING
    assert polled["progress"].progress is not None and polled["progress"].progress.percentage == 40
    assert polled["crashed"].phase is LegPhase.CRASHED
    assert polled["failed"].phase is LegPhase.FAILED and polled["failed"].error == "ValueError: bad input"
    assert polled["done"].phase is LegPhase.SUCCEEDED


def test_many_ids_in_one_call(result_url: str) -> None:
    ids = [str(uuid.uuid4()) for _ in range(12_000)]
    _rows(result_url, [_row(task_id, "STARTED") for task_id in ids[::3]])
    reader = TaskMetaReader(result_url)
    try:
        states = reader.states(ids)
    finally:
        reader.dispose()
    assert set(states) == set(ids[::3])


def test_one_read_tells_what_a_poll_and_its_results_tell(result_url: str) -> None:
    """`observe` (the read on a completion notice): the states of `poll` and the results of the final ones."""
    report = {"score": 1.0, "tests": []}
    _rows(result_url, [
        _row("started", "STARTED", {"pid": 1}),
        _row("progress", "PROGRESS", {"progress": {"percentage": 40, "metadata": {}, "status": "running"}}),
        _row("crashed", "FAILURE", {"exc_type": "WorkerLostError", "exc_message": ["lost"]}),
        _row("failed", "FAILURE", {"exc_type": "ValueError", "exc_message": ["bad input"]}),
        _row("done", "SUCCESS", report),
        _row("broken", "SUCCESS", [1, 2]),
    ])  # fmt: skip
    ids = ["started", "progress", "crashed", "failed", "done", "broken", "queued"]
    adapter = CeleryAdapter(Settings())
    adapter._reader, adapter._reader_ready = TaskMetaReader(result_url), True
    try:
        states, results = adapter.observe(ids)
        polled = adapter.poll(ids)
        final = [leg_id for leg_id, state in polled.items() if state.phase.is_final]
        assert states == polled
        assert results == adapter.results(final)
    finally:
        adapter.close()
    assert set(results) == {"crashed", "failed", "done", "broken"}
    assert results["done"].report == report and results["done"].phase is LegPhase.SUCCEEDED
    assert results["broken"].phase is LegPhase.FAILED and results["broken"].error_type == "BadResult"
    assert states["queued"].phase is LegPhase.MISSING and states["progress"].progress is not None
