"""Wire shapes. The legacy ones have exactly the contract's key sets (shared/docs/legacy-contract.md)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from common.legacy import DEFAULT_CONTENT_TYPE
from common.redact import strip_credentials
from gateway.cutover.stages import Stage

SLUG = re.compile(r"^[A-Za-z0-9_-]+$")


# ------------------------------------------------------------------------------------------------ submitting
class TestCreate(BaseModel):
    """The legacy submit body: every field optional; `course_member_id` is accepted and not trusted."""

    __test__ = False
    model_config = ConfigDict(extra="ignore")

    course_member_id: str | None = None
    course_content_id: str | None = None
    course_content_path: str | None = None
    directory: str | None = None
    project: str | None = None
    provider_url: str | None = None
    version_identifier: str | None = None
    submit: bool | None = False


class TestRunResponse(BaseModel):
    """The contract's keys, plus `ResultGet`'s: the platform's CLI parses this answer as a `ResultGet` (which
    requires `course_content_type_id`), and keys are additive (no client breaks on one it does not read)."""

    __test__ = False

    id: str
    submit: bool | None
    course_member_id: str | None
    course_content_id: str | None
    course_submission_group_id: str | None
    execution_backend_id: str | None
    test_system_id: str | None
    result: float
    result_json: dict[str, Any] | None
    properties: dict[str, Any] | None
    version_identifier: str | None
    status: int
    submission_flow_run_id: str | None = None
    course_content_type_id: str
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    updated_by: str | None


class ResultList(BaseModel):
    """A listed result: `ResultGet` without `result_json`.

    Typed as the legacy models type them: the platform's client refuses a row where a required string is null,
    so these fields are never optional here (a row that lacks one fails on the gateway's side, visibly).
    """

    id: str
    submit: bool
    course_member_id: str
    course_content_id: str
    course_submission_group_id: str | None
    execution_backend_id: str
    test_system_id: str
    result: float
    properties: dict[str, Any] | None
    version_identifier: str
    status: int
    course_content_type_id: str
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    updated_by: str | None


class ResultGet(ResultList):
    result_json: dict[str, Any] | None


class ErrorDetail(BaseModel):
    """Every error answer: `{"detail": "..."}` (declared on the routes so the OpenAPI spec shows them)."""

    detail: Any


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorDetail, "description": text}
    for code, text in (
        (400, "Invalid request"),
        (401, "Not authenticated"),
        (403, "Not allowed"),
        (404, "Not found"),
        (409, "Conflicts with an existing record"),
        (503, "Database or engine unavailable; retry after Retry-After seconds"),
    )
}


class ResultUpdate(BaseModel):
    """The write-back body (`PATCH /api/results/{id}`)."""

    model_config = ConfigDict(extra="ignore")

    result: float | None = Field(default=None, ge=0.0, le=1.0)
    result_json: dict[str, Any] | None = None
    # Strict: `false` is not the status 0 (a boolean was a client's bug, and silently meant COMPLETED).
    status: int | None = Field(default=None, ge=-1, le=8, strict=True)
    properties: dict[str, Any] | None = None
    # A legacy worker sends `{"submit": true}` once its merge request exists: recorded, starts nothing.
    submit: bool | None = Field(default=None, strict=True)


class LegacyUserGet(BaseModel):
    """The legacy platform's user (`GET /api/user`): the gateway knows the id, login name and dates only."""

    id: str
    given_name: str | None = None
    family_name: str | None = None
    email: str | None = None
    number: str | None = None
    user_type: str | None = "user"
    fs_number: int | None = None
    username: str | None
    properties: dict[str, Any] | None = None
    archived_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


# --------------------------------------------------------------------------------------------------- tasks API
class TaskSubmission(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task_name: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=0, le=10)
    delay: float | None = Field(default=None, ge=0)


class TaskSubmitResponse(BaseModel):
    task_id: str
    status: str
    message: str


class TaskInfo(BaseModel):
    task_id: str
    task_name: str
    status: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: dict[str, Any] | None = None
    error: str | None = None
    worker: str | None = None
    queue: str | None = None
    retries: int | None = None


class TaskListItem(TaskInfo):
    """One task of `GET /api/tasks`: `TaskInfo`'s keys plus the platform's list keys (`date_done`, `has_result`,
    `has_error`). `status` is in Celery's words there (`SUCCESS`, `FAILURE`, `PENDING`, `STARTED`, `REVOKED`),
    as the platform's front end switches on them; `task_status` keeps the gateway's `TaskStatus` word."""

    task_status: str
    date_done: datetime | None = None
    has_result: bool
    has_error: bool


class TaskList(BaseModel):
    """`GET /api/tasks`: one page of tasks, newest first, with the total and whether more follow."""

    tasks: list[TaskListItem]
    total: int
    limit: int
    offset: int
    has_more: bool


class TaskResult(BaseModel):
    task_id: str
    status: str
    result: Any = None
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: dict[str, Any] | None = None


# ----------------------------------------------------------------------------------------- execution backends
class ExecutionBackendCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: str
    slug: str
    properties: dict[str, Any] | None = Field(default_factory=dict)

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError("slug must match ^[A-Za-z0-9_-]+$")
        return value


class ExecutionBackendUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str | None = None
    slug: str | None = None
    properties: dict[str, Any] | None = None

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str | None) -> str | None:
        if value is not None and not SLUG.match(value):
            raise ValueError("slug must match ^[A-Za-z0-9_-]+$")
        return value


class ExecutionBackendGet(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    type: str
    slug: str
    properties: dict[str, Any] | None
    created_at: datetime | None
    updated_at: datetime | None


# ------------------------------------------------------------------------------------------- catalog (admin)
class CourseContentIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    path: str
    directory: str | None = None
    kind: str = "assignment"
    course_content_type_id: str | None = None
    execution_backend_id: str | None = None
    reference_url: str | None = None
    reference_commit: str | None = None
    reference_credential: str | None = None
    max_submissions: int | None = Field(default=None, ge=0, strict=True)  # `false` is not 0

    @model_validator(mode="after")
    def _content_type(self) -> CourseContentIn:
        """An assignment always has a content type: its result rows carry it and legacy clients require it."""
        if self.kind == "assignment" and not self.course_content_type_id:
            self.course_content_type_id = DEFAULT_CONTENT_TYPE
        return self


class CourseContentPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    path: str | None = None
    directory: str | None = None
    kind: str | None = None
    course_content_type_id: str | None = None
    execution_backend_id: str | None = None
    reference_url: str | None = None
    reference_commit: str | None = None
    reference_credential: str | None = None
    max_submissions: int | None = Field(default=None, ge=0, strict=True)  # `false` is not 0


class CourseContentGet(CourseContentIn):
    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: datetime | None
    updated_at: datetime | None


class CourseMemberIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    user_id: str | None = None
    repository_url: str | None = None
    credential: str | None = None


class CourseMemberPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: str | None = None
    repository_url: str | None = None
    credential: str | None = None


class CourseMemberGet(CourseMemberIn):
    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: datetime | None
    updated_at: datetime | None

    @field_validator("repository_url")
    @classmethod
    def _shown_without_credentials(cls, url: str | None) -> str | None:
        """Rows stored before URLs were stripped still never show a password in a listing."""
        return strip_credentials(url) if url else url


class Role(StrEnum):
    """The three roles of the legacy API; stored as these strings in `users.role`.

    Here, at the bottom of the service's layers, so the API's role checks, the services and the store share it."""

    ADMIN = "admin"
    WORKER = "worker"
    STUDENT = "student"


ROLES = tuple(Role)


class UserIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    username: str = Field(min_length=1, max_length=255)
    password: str = Field(min_length=1)
    role: str = Role.STUDENT.value
    course_member_ids: list[str] = Field(default_factory=list)

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        return value


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    password: str | None = Field(default=None, min_length=1)
    role: str | None = None
    course_member_ids: list[str] | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        if value is not None and value not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        return value


class UserGet(BaseModel):
    """A user as the admin API shows it: never the hash."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    role: str
    course_member_ids: list[str] | None
    created_at: datetime | None
    updated_at: datetime | None


class CutoverChangeIn(BaseModel):
    """One change of a migration (`POST /api/admin/cutover/{scope}/{key}/{action}`); unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    reason: str = ""
    dry_run: bool = False
    expected_version: int | None = None
    stage: Stage | None = None  # an unknown stage is a 422 naming the allowed ones
    percentage: float | None = None
    old_engine: str | None = None
    new_engine: str | None = None
    policy: str | None = None
    answer_policy: str | None = None
    shadow_fraction: float | None = None
    canary_steps: list[float] | None = None
    min_stage_seconds: float | None = None
    thresholds: dict[str, float | list[str]] | None = None  # `parity` is a list of field names
    salt: str | None = None
    # Preview: where these members' (and a sample's) next jobs go, before and after.
    members: list[str] = Field(default_factory=list)
    sample: int = Field(default=0, ge=0, le=1000)


class CutoverHoldIn(BaseModel):
    """Pause or resume a migration's automation (`POST /api/admin/cutover/{scope}/{key}/pause|resume`)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000)


class CutoverAcceptanceIn(BaseModel):
    """Accept a mismatch cluster (`PUT /api/admin/cutover/{scope}/{key}/clusters/{signature}/acceptance`): why,
    and until when - an instant (`expires_at`, ISO 8601 with a zone) or a duration (`expires_in`, e.g. "P14D")."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(min_length=1, max_length=2000)
    expires_at: AwareDatetime | None = None
    expires_in: timedelta | None = None
