"""Flows for tests and benchmarks only (`gateway prefect serve --test-flows`): a no-op, a waiter, a failure.

They behave like the shipped flows (JSON results in the same storage, progress labels) so a test can cancel a
running flow, kill its runner mid-run, or see an infrastructure failure without a slow or broken git checkout.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict

from backends.prefect import names
from backends.prefect.flows import result_storage
from backends.prefect.labels import progress_labels
from backends.prefect.progress import update_own_labels
from backends.work.errors import InfrastructureError


@flow(name=names.NOOP_FLOW, persist_result=True, result_serializer="json", result_storage=result_storage())
def noop(test_job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Returns at once: measures the engine's own overhead."""
    return {"noop": True}


@flow(name=names.WAIT_FLOW, persist_result=True, result_serializer="json", result_storage=result_storage())
def wait(seconds: float = 600.0, test_job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publishes progress, then sleeps in short steps (a stand-in for a long test run) until `seconds` pass."""
    update_own_labels(progress_labels(10, "running", {"waiting": seconds}))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)  # the flow's own "work", not test synchronisation
    return {"waited": seconds}


@flow(name=names.FAIL_FLOW, persist_result=True, result_serializer="json", result_storage=result_storage())
def fail(test_job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fails the way a broken checkout does."""
    raise InfrastructureError("Git clone of student repository failed.")


@flow(name=names.UNPERSISTED_FLOW, persist_result=False)
def unpersisted(test_job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Like a deployment the gateway did not write: completes without persisting its result."""
    return {"unpersisted": True}


# A flow the gateway did not write, in the legacy style: it reports through the gateway's write-back API.
WRITEBACK_FLOW = "gateway-test-writeback"


@flow(name=WRITEBACK_FLOW, persist_result=False)
def writeback(test_job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Finds its row by its own flow-run id (and its job's ids, as the platform's flow sends them), then PATCHes
    RUNNING and a final verdict, as legacy flows did.

    The gateway's URL and the worker account come from the runner's environment (`GATEWAY_WRITEBACK_URL`,
    `GATEWAY_WRITEBACK_USER`, `GATEWAY_WRITEBACK_PASSWORD`); nothing secret travels in the parameters. Like a
    legacy worker behind a proxy that stripped `/api`, the paths are the bare ones (`/results`), under the URL.
    """
    import os

    import httpx
    from prefect.runtime import flow_run

    run_id = str(flow_run.id)
    auth = (os.environ["GATEWAY_WRITEBACK_USER"], os.environ["GATEWAY_WRITEBACK_PASSWORD"])
    base_url = os.environ["GATEWAY_WRITEBACK_URL"].rstrip("/") + "/"
    # The platform's `commit_results` query: the run id with its job's backend, member and content ids.
    job = test_job or {}
    query: dict[str, Any] = {"test_system_id": run_id, "latest": "false"}
    ids = ("execution_backend_id", "course_member_id", "course_content_id")
    query |= {key: job[key] for key in ids if job.get(key)}
    with httpx.Client(base_url=base_url, auth=auth, timeout=30) as client:
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while not rows and time.monotonic() < deadline:
            response = client.get("results", params=query)
            response.raise_for_status()
            rows = response.json()
            if not rows:
                time.sleep(0.5)  # the gateway records the run id right after creating the run
        if not rows:
            raise RuntimeError(f"no result row for flow run {run_id}")
        result_id = rows[0]["id"]
        client.patch(f"results/{result_id}", json={"status": 5}).raise_for_status()
        summary = {"total": 2, "passed": 1, "failed": 1, "skipped": 0}
        report = {"name": "writeback", "type": "report", "status": "COMPLETED", "result": "FAILED",
                  "summary": summary, "tests": []}  # fmt: skip
        client.patch(
            f"results/{result_id}", json={"status": 0, "result": 0.5, "result_json": report}
        ).raise_for_status()
    return {"result_id": result_id}


# The platform's own `submit-result` flow, as far as its signature goes: a deployment the gateway did not write.
# Its one parameter is the platform's `Submission` model; these mirror that model's field types (what Prefect
# validates a run's parameters against), not its code.
LEGACY_SUBMIT_FLOW = "gateway-test-legacy-submit"


class PlatformRepository(BaseModel):
    """The platform's `Repository` (extra keys ignored, as there: the gateway's `credential` name rides along)."""

    url: str
    user: str | None = ""
    token: str | None = ""
    branch: str | None = "main"
    path: str | None = ""
    commit: str | None = ""


class PlatformGitLabConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str | None = None
    full_path: str | None = None
    directory: str | None = None


class PlatformContentProperties(BaseModel):
    model_config = ConfigDict(extra="allow")

    gitlab: PlatformGitLabConfig | None = None


class PlatformCourseContentGet(BaseModel):
    """The platform's `CourseContentGet`: these strings and the position are required there."""

    created_at: datetime | None = None
    updated_at: datetime | None = None
    created_by: str | None = None
    updated_by: str | None = None
    id: str
    archived_at: datetime | None = None
    title: str | None = None
    description: str | None = None
    path: str
    course_id: str
    course_content_type_id: str
    course_content_kind_id: str
    properties: PlatformContentProperties | None = None
    version_identifier: str
    position: float
    max_group_size: int | None = None
    max_test_runs: int | None = None
    max_submissions: int | None = None
    execution_backend_id: str | None = None


class PlatformSubmission(BaseModel):
    """The platform's `Submission`: every field required."""

    submission: PlatformRepository
    provider: str
    full_path: str
    token: str
    assignment: PlatformCourseContentGet
    module: PlatformRepository
    result_id: str
    user_id: str


@flow(name=LEGACY_SUBMIT_FLOW, persist_result=True, result_serializer="json", result_storage=result_storage())
def legacy_submit(submission: PlatformSubmission) -> dict[str, Any]:
    """Exactly the platform's signature (a run without `submission`, or with a field missing, never starts:
    Prefect checks the parameters against it); returns what it parsed, as the platform's types read it."""
    return submission.model_dump(mode="json", exclude_unset=True)


TEST_FLOWS = (noop, wait, fail, unpersisted, writeback, legacy_submit)
