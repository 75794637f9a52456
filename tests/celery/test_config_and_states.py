"""Fast checks without a worker: import isolation, the reliability settings, the state mapping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from backends.celery import names
from backends.celery.config import celery_config, visibility_timeout
from backends.celery.states import error_from, phase_for, progress_from
from backends.interface import LegPhase
from common.settings import Settings


def test_importing_the_adapter_imports_no_task_code() -> None:
    """The gateway imports the adapter; it must never pull in the work (or Celery itself) at import."""
    code = (
        "import sys, backends.celery.adapter, backends.registry\n"
        "bad = [m for m in sys.modules if m.startswith('backends.work') or m == 'backends.celery.tasks']\n"
        "print(repr(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_reliability_settings(isolated_env: Path) -> None:
    settings = Settings(redis_host="127.0.0.1", postgres_host="127.0.0.1", task_time_limit=700)
    conf = celery_config(settings)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["task_track_started"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"] and conf["result_extended"]
    assert conf["task_time_limit"] == 700
    assert conf["broker_transport_options"]["visibility_timeout"] > 700 == visibility_timeout(settings) - 300
    assert conf["database_url"].startswith("postgresql+psycopg2://")
    assert conf["beat_schedule"]["result-cleanup"]["task"] == "celery.backend_cleanup"
    assert conf["task_routes"][names.STUDENT_TESTING]["queue"] == names.HIGH_PRIORITY
    assert conf["task_routes"][names.SUBMISSION_PROCESSING]["queue"] == names.DEFAULT


def test_embedded_default_uses_filesystem_broker_and_sqlite(isolated_env: Path) -> None:
    settings = Settings()
    conf = celery_config(settings)
    assert conf["broker_url"] == "filesystem://"
    assert conf["database_url"].startswith("sqlite:///")
    options = conf["broker_transport_options"]
    assert options["data_folder_in"] == options["data_folder_out"]
    assert Path(options["control_folder"]).is_dir()


def test_state_mapping_follows_the_contract() -> None:
    assert phase_for("STARTED") is LegPhase.RUNNING
    assert phase_for("PROGRESS") is LegPhase.RUNNING
    assert phase_for("SUCCESS") is LegPhase.SUCCEEDED
    assert phase_for("FAILURE") is LegPhase.FAILED
    assert phase_for("REVOKED") is LegPhase.CANCELLED
    assert phase_for("RETRY") is LegPhase.QUEUED
    assert phase_for("FAILURE", {"exc_type": "WorkerLostError"}) is LegPhase.CRASHED
    assert int(phase_for("REVOKED").result_status()) == 2
    assert int(phase_for("STARTED").result_status()) == 5
    progress = progress_from({"progress": {"percentage": 40, "metadata": {"stage": "x"}, "status": "running"}})
    assert progress is not None and progress.percentage == 40
    assert error_from({"exc_type": "TaskInfrastructureError", "exc_message": ["InfrastructureError: clone"]}) == (
        "InfrastructureError: clone",
        "TaskInfrastructureError",
    )
