"""Rows → legacy response shapes (exact key sets), in one place."""

from __future__ import annotations

from typing import Any

from backends.interface import LegPhase
from common.legacy import CELERY_STATE_OF, DEFAULT_CONTENT_TYPE, TaskStatus
from gateway.legs.states import DispatchState, LegRole
from gateway.schemas import (
    LegacyUserGet,
    ResultGet,
    ResultList,
    TaskInfo,
    TaskListItem,
    TaskResult,
    TestRunResponse,
)
from gateway.store.accounts import Principal
from gateway.store.models import Leg, Result, User

_COMMON = (
    "id",
    "submit",
    "course_member_id",
    "course_content_id",
    "course_submission_group_id",
    "execution_backend_id",
    "test_system_id",
    "result",
    "properties",
    "version_identifier",
    "status",
)
_META = ("course_content_type_id", "created_at", "updated_at", "created_by", "updated_by")


def _fields(row: Any, names: tuple[str, ...]) -> dict[str, Any]:
    fields = {name: getattr(row, name) for name in names}
    if "course_content_type_id" in fields and not fields["course_content_type_id"]:
        fields["course_content_type_id"] = DEFAULT_CONTENT_TYPE  # a row from before the catalog carried it
    return fields


def test_run_response(row: Any, submission_run_id: str | None = None) -> TestRunResponse:
    """`row`: a `Result` or anything with its attributes (the submit path's `NewRow`).

    `submission_flow_run_id` is the id of the submission-processing leg a `submit=true` run started. The
    `ResultGet` keys come along (a superset of the contract's keys): the platform's CLI parses this as one."""
    return TestRunResponse(
        **_fields(row, _COMMON + _META), result_json=row.result_json, submission_flow_run_id=submission_run_id
    )


test_run_response.__test__ = False  # type: ignore[attr-defined]


def result_get(row: Result) -> ResultGet:
    return ResultGet(**_fields(row, _COMMON + _META), result_json=row.result_json)


def result_list(row: Result) -> ResultList:
    return ResultList(**_fields(row, _COMMON + _META))


def leg_task_status(leg: Leg) -> str:
    if not leg.finished and leg.dispatch_state == DispatchState.PENDING:
        return TaskStatus.DEFERRED.value if (leg.dispatch_attempts or 0) == 0 else TaskStatus.QUEUED.value
    try:
        return LegPhase(leg.phase).task_status().value
    except ValueError:
        return TaskStatus.QUEUED.value


def task_info(leg: Leg) -> TaskInfo:
    return TaskInfo(
        task_id=leg.id,
        task_name=leg.task_name,
        status=leg_task_status(leg),
        created_at=leg.created_at,
        started_at=leg.started_at,
        finished_at=leg.finished_at,
        progress=leg.progress,
        error=leg.error or (leg.last_error if not leg.finished else None),
        worker=leg.worker,
        queue=leg.queue,
        retries=max(0, (leg.dispatch_attempts or 0) - 1),
    )


def task_list_item(leg: Leg) -> TaskListItem:
    """A listed task as the platform's list showed a `celery_taskmeta` row: its state in Celery's words,
    `date_done` (when it ended, or when its last state began), whether a result or an error was stored."""
    info = task_info(leg)
    status = TaskStatus(info.status)
    succeeded = leg.finished and leg.phase == LegPhase.SUCCEEDED
    return TaskListItem(
        **info.model_dump(exclude={"status"}),
        status=CELERY_STATE_OF[status].value,
        task_status=status.value,
        date_done=leg.finished_at or leg.started_at,
        has_result=bool(leg.finished and (leg.payload is not None or succeeded)),
        has_error=bool(leg.finished and leg.error),
    )


def task_result(leg: Leg, row: Result | None) -> TaskResult:
    result: Any = leg.payload
    if row is not None and leg.role == LegRole.PRIMARY:
        result = row.result_json
    return TaskResult(
        task_id=leg.id,
        status=leg_task_status(leg),
        result=result if leg.finished else None,
        error=leg.error,
        created_at=leg.created_at,
        started_at=leg.started_at,
        finished_at=leg.finished_at,
        progress=leg.progress,
    )


def user_get(principal: Principal, user: User | None) -> LegacyUserGet:
    """`properties.role` tells a client which gateway role the login has (the legacy model keeps extras there)."""
    return LegacyUserGet(
        id=principal.user_id,
        username=principal.username,
        properties={"role": principal.role},
        created_at=user.created_at if user else None,
        updated_at=user.updated_at if user else None,
    )
