"""One message vocabulary for infrastructure failures, whatever the engine said (issue 16, point 2).

The texts in the tables are the shapes the engines really report: Celery's FAILURE carries the work's text behind
`TaskInfrastructureError` (`InfrastructureError: <text>`), Prefect's failed state `Flow run encountered an
exception: InfrastructureError: <text>`. Both must become the same `result_json` but for the engine's key.
"""

from __future__ import annotations

import pytest

from backends.work.errors import BadJobError, InfrastructureError
from common.failures import GENERIC_TYPE, InfraMessage, describe_failure
from common.legacy import ResultStatus
from gateway.jobs.submit import submit_test
from gateway.runtime import GatewayState
from gateway.store.models import Leg, Result
from tests.fast.conftest import ADMIN, MemoryGateway, body

pytestmark = pytest.mark.fast

GIT_TAIL = "fatal: '/tmp/x/nope.git' does not appear to be a git repository"

# (the work's text, its exception type, the message a client reads)
WORK_TEXTS = [
    (f"Git clone of student repository failed: {GIT_TAIL}", "InfrastructureError", InfraMessage.STUDENT_CLONE_FAILED),
    ("Git clone of reference repository failed: git timed out after 120s", "InfrastructureError",
     InfraMessage.REFERENCE_CLONE_FAILED),
    ("Commit 0123abcd not found in the student repository", "InfrastructureError",
     InfraMessage.STUDENT_COMMIT_NOT_FOUND),
    ("Commit 0123abcd not found in the reference repository", "InfrastructureError",
     InfraMessage.REFERENCE_COMMIT_NOT_FOUND),
    ("Credential for the student repository not available: no secret 'gitlab'", "InfrastructureError",
     InfraMessage.CREDENTIAL_UNAVAILABLE),
    ("git is not installed on this worker", "InfrastructureError", InfraMessage.GIT_MISSING),
    ("meta.yaml is not valid YAML: line 3", "InfrastructureError", InfraMessage.ASSIGNMENT_UNUSABLE),
    ("the assignment has no test files (test_*.py or meta.yaml testFiles)", "InfrastructureError",
     InfraMessage.ASSIGNMENT_UNUSABLE),
    ("refused repository URL 'ext::sh -c x': transport not allowed", "BadJobError", InfraMessage.JOB_REFUSED),
    ("sandbox user 'runner' does not exist on this worker", "InfrastructureError", InfraMessage.SANDBOX_UNUSABLE),
    ("test runner crashed (exit code 2): ImportError: x", "InfrastructureError", InfraMessage.RUNNER_CRASHED),
    ("push to the submissions repository failed: rejected", "InfrastructureError", InfraMessage.SUBMISSION_FAILED),
    ("test run failed on the worker: OSError: disk full", "InfrastructureError", InfraMessage.FAILED),
    ("something nobody foresaw", "InfrastructureError", InfraMessage.FAILED),
]  # fmt: skip


def celery_said(exc_type: str, text: str) -> tuple[str, str]:
    """(error_type, error) as `backends.celery.states.error_from` reads a FAILURE of the gateway's tasks."""
    return "TaskInfrastructureError", f"{exc_type}: {text}"


def prefect_said(exc_type: str, text: str) -> tuple[str, str]:
    """(error_type, error) as the Prefect adapter reads a failed flow run (label `error.type`, state message)."""
    return exc_type, f"Flow run encountered an exception: {exc_type}: {text}"


@pytest.mark.parametrize(("text", "exc_type", "message"), WORK_TEXTS)
def test_the_same_failure_reads_the_same_on_both_engines(text: str, exc_type: str, message: InfraMessage) -> None:
    celery = describe_failure(*celery_said(exc_type, text))
    prefect = describe_failure(*prefect_said(exc_type, text))
    assert celery == prefect
    assert celery.message == message and celery.exception == exc_type and celery.details == text
    assert celery.as_result_json("celery")["message"] == prefect.as_result_json("prefect")["message"]


def test_the_contracts_clone_failure_text_and_details_apart() -> None:
    failure = describe_failure(
        *celery_said("InfrastructureError", f"Git clone of student repository failed: {GIT_TAIL}")
    )
    assert failure.as_result_json("celery") == {
        "celery_exception": "InfrastructureError",
        "message": "Git clone of student repository failed.",
        "details": f"Git clone of student repository failed: {GIT_TAIL}",
    }


def test_details_are_redacted() -> None:
    text = "Git clone of student repository failed: fatal: unable to access 'https://oauth2:s3cret@gitlab.example/x/'"
    failure = describe_failure(*prefect_said("InfrastructureError", text))
    assert failure.details is not None and "s3cret" not in failure.details and "oauth2:***@" in failure.details


@pytest.mark.parametrize(
    ("error_type", "text", "message"),
    [
        (
            "WorkerLostError",
            "WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL).",
            InfraMessage.WORKER_LOST,
        ),
        ("ResultUnavailable", "the persisted result x.json is not in /data", InfraMessage.RESULT_UNREADABLE),
        ("DeadlineExceeded", InfraMessage.DEADLINE_EXCEEDED.value, InfraMessage.DEADLINE_EXCEEDED),
        (None, "deployment not found: no-such-flow/system", InfraMessage.DEPLOYMENT_MISSING),
        ("Crashed", "Flow run infrastructure exited with non-zero status code 1.", InfraMessage.FAILED),
        (None, None, InfraMessage.FAILED),
    ],
)
def test_failures_outside_the_work_have_their_own_message(
    error_type: str | None, text: str | None, message: InfraMessage
) -> None:
    failure = describe_failure(error_type, text)
    assert failure.message == message
    assert failure.exception not in {"TaskInfrastructureError", "Crashed"}
    if text == message.value:
        assert failure.details is None  # nothing to add to the message itself


def test_the_work_knows_what_a_client_will_read() -> None:
    clone = InfrastructureError(f"Git clone of student repository failed: {GIT_TAIL}").failure
    assert (clone.exception, clone.message) == ("InfrastructureError", InfraMessage.STUDENT_CLONE_FAILED)
    refused = BadJobError("malformed test job: 2 invalid field(s)").failure
    assert (refused.exception, refused.message) == ("BadJobError", InfraMessage.JOB_REFUSED)
    assert describe_failure(None, "").exception == GENERIC_TYPE


@pytest.mark.parametrize("said", [celery_said, prefect_said])
def test_a_failed_leg_writes_the_stable_message_to_its_row_and_task_view(memory_gateway: MemoryGateway, said) -> None:  # type: ignore[no-untyped-def]
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> tuple[Result, Leg]:
        row, _ = await submit_test(state, ADMIN, body("broken"))
        error_type, error = said("InfrastructureError", f"Git clone of student repository failed: {GIT_TAIL}")
        engine.fail(row.test_system_id, error, error_type)
        await state.reconciler.tick()
        async with state.sessions() as session:
            stored = await session.get(Result, row.id)
            leg = await session.get(Leg, row.test_system_id)
        assert stored is not None and leg is not None
        return stored, leg

    stored, leg = memory_gateway.run(test)
    assert stored.status == int(ResultStatus.FAILED) and stored.result == 0.0
    assert stored.result_json == {
        "celery_exception": "InfrastructureError",
        "message": "Git clone of student repository failed.",
        "details": f"Git clone of student repository failed: {GIT_TAIL}",
    }
    assert leg.error == "Git clone of student repository failed." and leg.payload == stored.result_json
