"""A runner killed mid-run (SIGKILL, no goodbye) is detected, not waited on forever; its run can still be ended.

A separate, killable runner serves its own deployments (`*/killme`), so the session's runner never picks these
runs up and is not disturbed.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from backends.interface import JobSpec, LegPhase, LegState, TaskKind
from backends.prefect.adapter import PrefectAdapter
from common.settings import Settings
from tests.support.prefect_server import running_runner, wait_until

pytestmark = pytest.mark.slow


def test_a_killed_runner_is_detected_and_its_run_can_be_cancelled(
    prefect_env: dict[str, str], prefect_settings: Settings, prefect_root: Path
) -> None:
    # Short thresholds so the test is quick: stale after 5 s without a poll (the runner polls every 1 s),
    # and no grace before forcing a cancel that no runner will ever carry out.
    adapter = PrefectAdapter(prefect_settings, runner_stale_after=5.0, cancel_grace_seconds=0.0)
    leg_id = f"leg-{uuid.uuid4()}"
    spec = JobSpec(
        kind=TaskKind.STUDENT_TESTING,
        params={"seconds": 300, "test_job": {"user_id": "u1"}},
        properties={"deployment": "gateway-test-wait/killme"},
    )
    with running_runner(
        prefect_env,
        test_flows=True,
        deployment_name="killme",
        wait_for=["gateway-test-wait/killme"],
        log_path=prefect_root / "runner-killme.log",
    ) as runner:
        adapter.submit(spec, leg_id)

        def running() -> LegState | None:
            state = adapter.poll([leg_id])[leg_id]
            return state if state.phase is LegPhase.RUNNING else None

        assert wait_until(running, "the run to start").stalled is None
        os.killpg(os.getpgid(runner.pid), signal.SIGKILL)  # the runner and its flow-run subprocess
        runner.wait()

    def noticed() -> LegState | None:
        state = adapter.poll([leg_id])[leg_id]
        return state if state.stalled or state.phase is LegPhase.CRASHED else None

    state = wait_until(noticed, "the lost runner to be noticed", timeout=60)
    if state.phase is not LegPhase.CRASHED:
        assert state.phase is LegPhase.RUNNING
        assert "gateway-test-wait/killme" in (state.stalled or "")
    serving = {w.name: w for w in adapter.workers()}["gateway-test-wait/killme"]
    assert serving.details["alive"] is False

    first = adapter.cancel(leg_id)
    assert first.phase in (LegPhase.CANCELLING, LegPhase.CANCELLED, LegPhase.CRASHED)
    if first.phase is LegPhase.CANCELLING:
        assert adapter.cancel(leg_id).phase is LegPhase.CANCELLED
    adapter.close()
