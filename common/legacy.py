"""Legacy shapes that travel between the gateway and the engines (see shared/docs/legacy-contract.md).

`TestJob` and `Repository` are what a Celery task or a Prefect flow receives; `ResultStatus` and `TaskStatus`
are the wire values legacy clients test for. The report tree itself is built in `backends.work.report`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The course content type of an assignment whose catalog entry names none: the legacy result models require a
# string in `course_content_type_id` (the platform's own client rejects null).
DEFAULT_CONTENT_TYPE = "assignment"


class Repository(BaseModel):
    """A git repository at a commit. `token` exists for legacy compatibility only: it is never used."""

    model_config = ConfigDict(extra="allow")

    url: str
    user: str | None = None
    token: str | None = None
    branch: str = "main"
    path: str | None = None
    commit: str | None = None
    # A name in the worker's secret store; the worker resolves it. Secrets never travel in job parameters.
    credential: str | None = None
    # The hosts the credential is bound to (`common.credential_binding`); it is sent to no other host.
    credential_hosts: list[str] | None = None


class TestJob(BaseModel):
    """The parameters of one test run (`test_job` in both engines)."""

    __test__ = False  # not a pytest test class despite the name
    model_config = ConfigDict(extra="allow")

    user_id: str | None = None
    course_member_id: str | None = None
    course_content_id: str | None = None
    execution_backend_id: str | None = None
    module: Repository
    reference: Repository | None = None
    test_number: int = -1
    submission_number: int = -1


class ResultStatus(IntEnum):
    """Integers on the wire; the names are Prefect's state types."""

    NOT_AVAILABLE = -1
    COMPLETED = 0
    FAILED = 1
    CANCELLED = 2
    SCHEDULED = 3
    PENDING = 4
    RUNNING = 5
    CRASHED = 6
    PAUSED = 7
    CANCELLING = 8


def status_name(status: int) -> str:
    """The wire name of a row status (`NOT_AVAILABLE` for a value the enum does not know)."""
    try:
        return ResultStatus(status).name
    except ValueError:
        return ResultStatus.NOT_AVAILABLE.name


class TaskStatus(StrEnum):
    """Celery-era task API status strings."""

    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    DEFERRED = "deferred"
    CANCELLED = "cancelled"


class CeleryState(StrEnum):
    """Celery's own state words: the platform's task list (`GET /tasks`) shows and filters by these, and its
    front end switches on them (it never learnt the `TaskStatus` words for that view)."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRY = "RETRY"
    REVOKED = "REVOKED"


# A task's `TaskStatus` in Celery's words (RETRY is never shown: a re-run is PENDING again, as Celery shows it).
CELERY_STATE_OF = {
    TaskStatus.QUEUED: CeleryState.PENDING,
    TaskStatus.DEFERRED: CeleryState.PENDING,
    TaskStatus.STARTED: CeleryState.STARTED,
    TaskStatus.FINISHED: CeleryState.SUCCESS,
    TaskStatus.FAILED: CeleryState.FAILURE,
    TaskStatus.CANCELLED: CeleryState.REVOKED,
}


class Progress(BaseModel):
    """Progress as legacy task views show it: `{"percentage": int, "metadata": {...}, "status": "running"}`."""

    percentage: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: str = "running"
