"""`gateway worker status` and `gateway worker test-job` as a user runs them, against a real worker."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.celery_worker import GATEWAY_BIN, WorkerProcess, base_env, running_worker

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def gateway(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GATEWAY_BIN), *args], env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def cli_worker(pg_redis_env: dict[str, str]) -> Iterator[WorkerProcess]:
    with running_worker(pg_redis_env, concurrency=2) as worker:
        yield worker


def test_status_lists_the_worker_and_queues(cli_worker: WorkerProcess, pg_redis_env: dict[str, str]) -> None:
    out = gateway(pg_redis_env, "worker", "status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert cli_worker.hostname in out.stdout
    for queue in ("high_priority", "default", "low_priority"):
        assert queue in out.stdout


def test_status_never_prints_a_password(cli_worker: WorkerProcess, pg_redis_env: dict[str, str]) -> None:
    # The local servers accept any password (trust auth, no requirepass), so the status is still complete.
    env = {**pg_redis_env, "REDIS_PASSWORD": "s3cret-redis-pw", "POSTGRES_PASSWORD": "s3cret-pg-pw"}
    out = gateway(env, "worker", "status", timeout=120)
    text = out.stdout + out.stderr
    assert "s3cret" not in text
    assert "redis://:***@" in text and "postgresql+psycopg2://postgres:***@" in text


def test_status_exits_non_zero_when_no_worker_answers(tmp_path: Path) -> None:
    env = base_env({}, tmp_path / "empty-data")  # the embedded default, where no worker runs
    env["SANDBOX_SLOTS"], env["SANDBOX_ROOT"] = "3", str(tmp_path / "sandboxes")
    out = gateway(env, "worker", "status", timeout=120)
    assert out.returncode == 1
    assert "no worker answered" in out.stdout
    assert "sandbox slots on this host: 0/3 in use" in out.stdout  # admission: runs in progress / slots
    # which bound holds a run's total memory on this host: its own cgroup (hard) or the worker's polling
    assert re.search(r"sandbox memory bound per run \(\d+ MiB\): (cgroup-v1|cgroup-v2|watch) ", out.stdout)
    env["SANDBOX_CGROUP_ROOT"] = str(tmp_path)  # not a memory cgroup: the polled bound, and why
    out = gateway(env, "worker", "status", timeout=120)
    why = f"{tmp_path} is not a memory cgroup" if os.geteuid() == 0 else "the worker is not root"
    assert f"watch (polled every 0.1 s, may overshoot): {why}" in out.stdout


def test_test_job_rejects_an_unknown_task(pg_redis_env: dict[str, str]) -> None:
    out = gateway(pg_redis_env, "worker", "test-job", "--task=bogus")
    assert out.returncode == 2
    assert "student_testing" in out.stdout and "submission_processing" in out.stdout


def test_test_job_waits_and_prints_summary_and_row(cli_worker: WorkerProcess, pg_redis_env: dict[str, str]) -> None:
    out = gateway(pg_redis_env, "worker", "test-job", "--task=student_testing", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "succeeded" in out.stdout and "passed=3" in out.stdout
    assert "celery_taskmeta row" in out.stdout and '"queue": "high_priority"' in out.stdout
    assert cli_worker.hostname in out.stdout


def test_test_job_without_wait_prints_the_task_id(cli_worker: WorkerProcess, pg_redis_env: dict[str, str]) -> None:
    out = gateway(pg_redis_env, "worker", "test-job", "--task=submission_processing")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}", out.stdout.strip())
