"""Nothing is lost when a worker dies: SIGKILL mid-task, and the task completes on a new worker.

Redis keeps the unacknowledged message (acks_late) and hands it out again after the visibility timeout, set short
here. The workers consume a queue of their own, so no other worker of the session can take the message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.celery import names
from backends.celery.adapter import CeleryAdapter
from backends.interface import LegPhase
from tests.celery.conftest import new_id, wait_for
from tests.support.celery_test_tasks import BLOCK_UNTIL
from tests.support.celery_worker import TEST_TASKS_MODULE, kill_worker, running_worker, settings_from_env, start_worker

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

QUEUE = "redelivery_test"


def test_sigkilled_worker_task_is_redelivered_and_completes(
    pg_redis_env: dict[str, str], release_file: Path, tmp_path: Path
) -> None:
    env = {**pg_redis_env, "CELERY_VISIBILITY_TIMEOUT": "3"}
    adapter = CeleryAdapter(settings_from_env(env))
    try:
        leg = new_id()
        first = start_worker(env, queues=[QUEUE], include=[TEST_TASKS_MODULE], log_dir=tmp_path)
        try:
            adapter.app.send_task(
                BLOCK_UNTIL, kwargs={"release_file": str(release_file)}, task_id=leg, queue=QUEUE, routing_key=QUEUE
            )
            running = wait_for(adapter, leg, lambda s: s.phase is LegPhase.RUNNING)
            assert running.worker == first.hostname
        finally:
            kill_worker(first)
        release_file.touch()
        with running_worker(env, queues=[QUEUE], include=[TEST_TASKS_MODULE], log_dir=tmp_path) as second:
            done = wait_for(adapter, leg, lambda s: s.phase.is_final, timeout=90)
            assert done.phase is LegPhase.SUCCEEDED, adapter.result(leg)
            assert done.worker == second.hostname
            assert adapter.result(leg).report == {"released": True, "worker": second.hostname}
    finally:
        adapter.close()


def test_queue_depth_counts_priority_subqueues(pg_redis_env: dict[str, str]) -> None:
    """No worker consumes low_priority here: messages of two priorities both count toward its depth."""
    adapter = CeleryAdapter(settings_from_env(pg_redis_env))
    try:
        before = adapter.queue_depths()[names.LOW_PRIORITY]
        for priority in (0, 8):
            adapter.app.send_task(
                names.NOOP,
                task_id=new_id(),
                queue=names.LOW_PRIORITY,
                routing_key=names.LOW_PRIORITY,
                priority=priority,
            )
        assert adapter.queue_depths()[names.LOW_PRIORITY] == before + 2
    finally:
        with adapter.app.connection_for_write() as conn:
            conn.default_channel.queue_purge(names.LOW_PRIORITY)
        adapter.close()
