"""A leg the gateway gives up on at its deadline is cancelled on its engine too (issue 24).

Before, the row said FAILED (`DeadlineExceeded`) while the run went on: flow runs completed after their row was
final and kept runner slots busy. Here a slow job outlives a short deadline (15 s) on a real worker: the row ends
FAILED with the deadline's message, the engine's run is revoked (its task REVOKED, its process terminated), and
the run never reaches an end of its own, even once its work could go on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from backends.celery.adapter import CeleryAdapter
from backends.interface import LegPhase
from tests.conftest import PostgresDB, RedisDB
from tests.faults.stack import DIRECTORY, SLOW, FaultStack, Tally, fault_stack
from tests.support.celery_worker import settings_from_env
from tests.support.slow_student import release_slow_runs
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow]

DEADLINE_SECONDS = 15


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_db: PostgresDB, redis_db: RedisDB) -> Iterator[FaultStack]:
    tmp = tmp_path_factory.mktemp("deadline-faults")
    env = {**postgres_db.env(), **redis_db.env(), "GATEWAY_LEG_DEADLINE_SECONDS": str(DEADLINE_SECONDS)}
    with fault_stack(tmp, None, env, 4) as stack:
        yield stack


def test_a_leg_timed_out_at_its_deadline_is_cancelled_on_its_engine(stack: FaultStack) -> None:
    tally = Tally()
    adapter = CeleryAdapter(settings_from_env({**stack.env, "GATEWAY_DATA_DIR": str(stack.data)}))
    try:
        with stack.client(SLOW) as slow, stack.client() as admin:
            tally.record(
                slow.post("/api/tests", json={"directory": DIRECTORY, "version_identifier": stack.slow_commit})
            )
            ((result_id, leg),) = tally.accepted.items()

            def status() -> int:
                return int(admin.get(f"/api/results/{result_id}/status").json())

            wait_until(lambda: adapter.poll([leg])[leg].phase is LegPhase.RUNNING, f"{leg} running", timeout=120)
            wait_until(lambda: status() == 1, "the row FAILED at the deadline", timeout=DEADLINE_SECONDS + 120)
            gave_up = time.monotonic()
            state = wait_until(
                lambda: (s := adapter.poll([leg])[leg]).phase is LegPhase.CANCELLED and s, "the run revoked", timeout=60
            )
            cancelled = time.monotonic() - gave_up
            row = admin.get(f"/api/results/{result_id}").json()
            info = admin.get(f"/api/tasks/{leg}/status").json()
        release_slow_runs(stack.sandboxes)  # were it still running, it could now finish
        print(f"deadline: the run was revoked {cancelled:.1f} s after the row said FAILED; {state.native}; {info}")
        assert row["status"] == 1 and "deadline" in str(row["result_json"] or info).lower(), (row, info)
        assert state.phase is LegPhase.CANCELLED, state
        assert f"[{leg}] succeeded" not in stack.worker_logs()
    finally:
        adapter.close()
