"""A real worker on Redis + PostgreSQL: results, routing, progress, cancel, one-query poll, health."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event

from backends.celery import names
from backends.celery.adapter import CeleryAdapter
from backends.interface import JobSpec, LegPhase, TaskKind
from tests.celery.conftest import new_id, wait_for
from tests.support.celery_test_tasks import BLOCK_UNTIL
from tests.support.celery_worker import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_noop_succeeds_and_row_has_name_worker_queue(pg_worker: WorkerProcess, pg_adapter: CeleryAdapter) -> None:
    leg = new_id()
    pg_adapter.send(names.NOOP, {"payload": {"n": 1}}, leg)
    state = wait_for(pg_adapter, leg, lambda s: s.phase.is_final)
    assert state.phase is LegPhase.SUCCEEDED and state.native == "SUCCESS"
    assert state.worker == pg_worker.hostname and state.queue == names.DEFAULT
    row = pg_adapter.taskmeta_row(leg)
    assert row is not None
    assert (row["name"], row["worker"], row["queue"]) == (names.NOOP, pg_worker.hostname, names.DEFAULT)
    assert row["kwargs"] == {"payload": {"n": 1}}
    assert pg_adapter.result(leg).report == {"ok": True, "worker": pg_worker.hostname, "payload": {"n": 1}}


def test_routing_and_infrastructure_failure(pg_worker: WorkerProcess, pg_adapter: CeleryAdapter) -> None:
    """Each kind lands in its queue; a job the work cannot run is a FAILURE with a clear, secret-free error."""
    secret_url = "https://student:hunter2-secret@git.invalid/x.git"
    testing, processing = new_id(), new_id()
    job = JobSpec(TaskKind.STUDENT_TESTING, {"test_job": {"module": {"url": secret_url, "commit": "0" * 40}}})
    pg_adapter.submit(job, testing)
    pg_adapter.submit(JobSpec(TaskKind.SUBMISSION_PROCESSING, {"submission": {"bogus": True}}), processing)
    states = {leg: wait_for(pg_adapter, leg, lambda s: s.phase.is_final) for leg in (testing, processing)}
    assert states[testing].queue == names.HIGH_PRIORITY
    assert states[processing].queue == names.DEFAULT
    assert pg_adapter.taskmeta_row(testing)["name"] == names.STUDENT_TESTING  # type: ignore[index]
    failed = pg_adapter.result(testing)
    assert failed.phase is LegPhase.FAILED, failed
    assert failed.error and ":" in failed.error and "hunter2-secret" not in failed.error


def test_progress_is_seen_then_success(pg_worker: WorkerProcess, pg_adapter: CeleryAdapter, release_file: Path) -> None:
    leg = new_id()
    pg_adapter.send(BLOCK_UNTIL, {"release_file": str(release_file)}, leg)
    running = wait_for(pg_adapter, leg, lambda s: s.progress is not None)
    assert running.phase is LegPhase.RUNNING and running.native == "PROGRESS"
    assert running.progress is not None and running.progress.percentage == 50
    assert running.progress.metadata["stage"] == "blocked" and running.progress.status == "running"
    release_file.touch()
    done = wait_for(pg_adapter, leg, lambda s: s.phase.is_final)
    assert done.phase is LegPhase.SUCCEEDED
    assert pg_adapter.result(leg).report == {"released": True, "worker": pg_worker.hostname}


def test_cancel_of_a_running_task_ends_revoked(
    pg_worker: WorkerProcess, pg_adapter: CeleryAdapter, release_file: Path
) -> None:
    leg = new_id()
    pg_adapter.send(BLOCK_UNTIL, {"release_file": str(release_file)}, leg)
    wait_for(pg_adapter, leg, lambda s: s.phase is LegPhase.RUNNING)
    assert pg_adapter.cancel(leg).phase is LegPhase.CANCELLING
    done = wait_for(pg_adapter, leg, lambda s: s.phase.is_final)
    assert done.phase is LegPhase.CANCELLED and done.native == "REVOKED"
    assert pg_adapter.result(leg).phase is LegPhase.CANCELLED


def test_poll_of_1000_ids_is_one_query(pg_worker: WorkerProcess, pg_adapter: CeleryAdapter) -> None:
    done = new_id()
    pg_adapter.send(names.NOOP, {}, done)
    wait_for(pg_adapter, done, lambda s: s.phase.is_final)
    ids = [new_id() for _ in range(999)] + [done]
    engine = pg_adapter._taskmeta().engine()
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        states = pg_adapter.poll(ids)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements
    assert len(states) == 1000 and states[done].phase is LegPhase.SUCCEEDED
    assert sum(s.phase is LegPhase.MISSING for s in states.values()) == 999


def test_workers_health_and_queue_depths(pg_worker: WorkerProcess, pg_adapter: CeleryAdapter) -> None:
    workers = pg_adapter.workers()
    assert [w.name for w in workers] == [pg_worker.hostname]
    assert workers[0].queues == sorted(names.ALL_QUEUES) and workers[0].uptime_seconds is not None
    health = pg_adapter.health()
    assert health.healthy and health.workers == 1, health
    assert set(pg_adapter.queue_depths()) == set(names.ALL_QUEUES)


def test_student_testing_example_end_to_end(
    pg_worker: WorkerProcess, pg_adapter: CeleryAdapter, tmp_path: Path
) -> None:
    """The bundled example through the real work: the passing solution scores 1.0, the failing one less."""
    from backends import examples
    from backends.work.report import report_score

    repos = examples.materialize_example(tmp_path / "example")
    legs = {}
    for variant in ("passing", "failing"):
        legs[variant] = new_id()
        job = JobSpec(TaskKind.STUDENT_TESTING, {"test_job": repos.test_job(variant).model_dump(mode="json")})
        pg_adapter.submit(job, legs[variant])
    results = {}
    for variant, leg in legs.items():
        state = wait_for(pg_adapter, leg, lambda s: s.phase.is_final, timeout=180)
        assert state.phase is LegPhase.SUCCEEDED, (state, pg_adapter.result(leg))
        results[variant] = pg_adapter.result(leg).report
    assert report_score(results["passing"]) == 1.0
    assert report_score(results["failing"]) < 1.0


def test_a_second_message_for_a_succeeded_id_runs_nothing(
    pg_worker: WorkerProcess, pg_adapter: CeleryAdapter, tmp_path: Path
) -> None:
    """The STARTED store meets the stored SUCCESS (`started_over_success`): the task returns it and runs nothing."""
    from backends.examples import materialize_example
    from tests.support.waiting import wait_until

    job = materialize_example(tmp_path / "example").test_job("passing").model_dump(mode="json")
    leg = new_id()
    kwargs = {"test_job": job, "execution_backend_properties": {}}
    pg_adapter.send(names.STUDENT_TESTING, kwargs, leg)
    assert wait_for(pg_adapter, leg, lambda s: s.phase.is_final).phase is LegPhase.SUCCEEDED
    first = pg_adapter.taskmeta_row(leg)
    assert first is not None

    pg_adapter.send(names.STUDENT_TESTING, kwargs, leg)  # the same id again (an outbox re-send)
    wait_until(lambda: f"task {leg} already succeeded: not run again" in pg_worker.log_text() or None,
               "the worker to skip the second message")  # fmt: skip
    again = pg_adapter.taskmeta_row(leg)
    assert again is not None
    assert (again["status"], again["date_done"], again["result"]) == ("SUCCESS", first["date_done"], first["result"])
    assert pg_worker.log_text().count(f"running {names.STUDENT_TESTING} {leg}") == 1
