"""The legacy flows: `test-assignment` (deployment `system`, parameter `test_job`) and `submit-result`.

Both only wire the engine-agnostic work (`backends.work`) to Prefect: progress becomes flow-run labels, the
returned report is persisted as JSON under `settings.data_dir/prefect-results` (the flow run's final state
carries the storage key, which is how the adapter finds it), and an `InfrastructureError` fails the run with
its safe message and an `error.type` label. Settings come from the environment of the runner that serves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from backends.prefect import names
from backends.prefect.labels import ERROR_KIND, ERROR_TYPE
from backends.prefect.progress import publish_progress, update_own_labels
from backends.work.errors import InfrastructureError
from common.settings import get_settings


def result_storage() -> Path:
    """Local storage the gateway can read; in production this folder is a volume shared with the gateway.

    A `Path` (not an unsaved `LocalFileSystem` block, which Prefect refuses): Prefect turns it into local storage
    without a block document on the server.
    """
    return get_settings().data_dir / names.RESULTS_SUBDIR


def _label_failure(exc: InfrastructureError) -> None:
    update_own_labels({ERROR_TYPE: type(exc).__name__, ERROR_KIND: exc.kind})


# Both shipped flows persist their return value as JSON where the gateway's adapter reads it back.
_PERSISTED_FLOW = {
    "persist_result": True,
    "result_serializer": "json",
    "result_storage": result_storage(),
    "timeout_seconds": get_settings().task_time_limit,
    "log_prints": False,
}


@flow(name=names.TEST_ASSIGNMENT_FLOW, **_PERSISTED_FLOW)
def test_assignment(test_job: dict[str, Any]) -> dict[str, Any]:
    """Check out, test in the sandbox, return the legacy report tree (`result_json`)."""
    from backends.work.student_testing import run_student_testing

    try:
        return run_student_testing(test_job, publish_progress)
    except InfrastructureError as exc:
        _label_failure(exc)
        raise


@flow(name=names.SUBMIT_RESULT_FLOW, **_PERSISTED_FLOW)
def submit_result(submission: dict[str, Any]) -> dict[str, Any]:
    """Record a submission (idempotent); returns what was recorded."""
    from backends.work.submission_processing import run_submission_processing

    try:
        return run_submission_processing(submission, publish_progress)
    except InfrastructureError as exc:
        _label_failure(exc)
        raise


SHIPPED_FLOWS = (test_assignment, submit_result)
