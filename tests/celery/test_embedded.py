"""The embedded default (filesystem broker, SQLite results): a real worker, no server at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.celery import names
from backends.celery.adapter import CeleryAdapter
from backends.interface import LegPhase
from tests.celery.conftest import new_id, wait_for
from tests.support.celery_test_tasks import BLOCK_UNTIL
from tests.support.celery_worker import TEST_TASKS_MODULE, WorkerProcess, running_worker, settings_from_env

pytestmark = [pytest.mark.slow]

# The worker leaves low_priority alone, so a message sent there stays countable.
CONSUMED = (names.HIGH_PRIORITY, names.DEFAULT)


@pytest.fixture(scope="module")
def fs_adapter(embedded_env: dict[str, str]) -> Iterator[CeleryAdapter]:
    adapter = CeleryAdapter(settings_from_env(embedded_env))
    yield adapter
    adapter.close()


@pytest.fixture(scope="module")
def fs_worker(embedded_env: dict[str, str]) -> Iterator[WorkerProcess]:
    with running_worker(embedded_env, queues=CONSUMED, concurrency=2, include=[TEST_TASKS_MODULE]) as worker:
        yield worker


def test_noop_row_in_sqlite(fs_worker: WorkerProcess, fs_adapter: CeleryAdapter) -> None:
    leg = new_id()
    fs_adapter.send(names.NOOP, {}, leg)
    state = wait_for(fs_adapter, leg, lambda s: s.phase.is_final)
    assert state.phase is LegPhase.SUCCEEDED
    row = fs_adapter.taskmeta_row(leg)
    assert row is not None and (row["name"], row["worker"], row["queue"]) == (
        names.NOOP,
        fs_worker.hostname,
        names.DEFAULT,
    )


def test_progress_then_cancel_over_filesystem_broadcast(
    fs_worker: WorkerProcess, fs_adapter: CeleryAdapter, release_file: Path
) -> None:
    """Revoke travels by broadcast; the filesystem transport supports fanout, so cancel works here too."""
    leg = new_id()
    fs_adapter.send(BLOCK_UNTIL, {"release_file": str(release_file)}, leg)
    running = wait_for(fs_adapter, leg, lambda s: s.progress is not None)
    assert running.progress is not None and running.progress.percentage == 50
    assert fs_adapter.cancel(leg).phase is LegPhase.CANCELLING
    done = wait_for(fs_adapter, leg, lambda s: s.phase.is_final)
    assert done.phase is LegPhase.CANCELLED and done.native == "REVOKED"


def test_workers_and_queue_depth_counts_files(fs_worker: WorkerProcess, fs_adapter: CeleryAdapter) -> None:
    assert [w.name for w in fs_adapter.workers()] == [fs_worker.hostname]
    assert fs_adapter.health().healthy
    before = fs_adapter.queue_depths()[names.LOW_PRIORITY]
    fs_adapter.app.send_task(names.NOOP, task_id=new_id(), queue=names.LOW_PRIORITY, routing_key=names.LOW_PRIORITY)
    assert fs_adapter.queue_depths()[names.LOW_PRIORITY] == before + 1
    # The file broker's names carry the publish time: the queue's oldest message has an age, bounded by the test's.
    assert 0 <= fs_adapter.queue_ages()[names.LOW_PRIORITY] < 600
