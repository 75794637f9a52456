"""`gateway worker test-job --backend prefect` and `gateway worker status` against the real server and runner."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.celery_worker import GATEWAY_BIN

pytestmark = [pytest.mark.slow]


def gateway(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GATEWAY_BIN), *args], env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=timeout
    )


def test_test_job_runs_the_example_on_prefect(prefect_env: dict[str, str], prefect_runner: object) -> None:
    out = gateway(prefect_env, "worker", "test-job", "--task=student_testing", "--backend", "prefect", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "succeeded" in out.stdout and "passed=3" in out.stdout


def test_status_shows_the_prefect_deployments(prefect_env: dict[str, str], prefect_runner: object) -> None:
    out = gateway(prefect_env, "worker", "status")
    # No Celery worker runs in this module, so the exit code is non-zero; the Prefect part must still show.
    assert "test-assignment/system" in out.stdout, out.stdout + out.stderr


def test_test_job_waits_for_a_missing_deployment_then_fails_with_a_hint(prefect_env: dict[str, str]) -> None:
    """No runner serves `nope/missing`: the command says it waits, then exits 1 with one line naming the fix."""
    out = gateway(prefect_env, "worker", "test-job", "--backend", "prefect", "--deployment", "nope/missing",
                  "--grace", "2")  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "waiting up to 2s for the Prefect deployment nope/missing" in out.stdout
    hint = out.stderr.strip()
    assert "\n" not in hint and "Traceback" not in hint
    assert hint.startswith("deployment nope/missing not found after 2s: start the runner with `gateway prefect serve`")
