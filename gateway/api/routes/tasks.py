"""The Celery era's task API over both engines: a task is a leg (with or without a legacy result row)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from gateway.api.auth import GuardedRoute
from gateway.api.deps import Admin, State
from gateway.api.views import task_info, task_list_item, task_result
from gateway.engines.routing import TASK_TYPES
from gateway.jobs import tasks
from gateway.schemas import TaskInfo, TaskList, TaskResult, TaskSubmission, TaskSubmitResponse

router = APIRouter(prefix="/tasks", route_class=GuardedRoute)
# The most tasks one list answer holds; a larger `limit` is capped to it.
TASK_LIST_CAP = 1000


@router.post("/submit", response_model=TaskSubmitResponse)
async def submit_task(body: TaskSubmission, state: State, principal: Admin) -> TaskSubmitResponse:
    task_id = await tasks.submit_task(state, body.task_name, body.parameters, body.priority, body.delay)
    return TaskSubmitResponse(task_id=task_id, status="submitted", message=f"Task {body.task_name} submitted")


@router.get("/types", response_model=list[str])
async def task_types(principal: Admin) -> list[str]:
    """The registry's short names, as the platform listed them; submit accepts these and the full Celery names."""
    return TASK_TYPES


@router.get("/workers/status")
async def workers_status(state: State, principal: Admin) -> dict[str, Any]:
    """Declared before `/{task_id}/status` (**fix**: the old router shadowed it). No URL is ever shown."""
    return await tasks.workers_status(state)


@router.get("/{task_id}/status", response_model=TaskInfo)
async def task_status(task_id: str, state: State, principal: Admin) -> TaskInfo:
    leg, _row = await tasks.task_leg(state, task_id, refresh=True)
    return task_info(leg)


@router.get("/{task_id}/result", response_model=TaskResult)
async def task_result_view(task_id: str, state: State, principal: Admin) -> TaskResult:
    leg, row = await tasks.task_leg(state, task_id, refresh=True)
    return task_result(leg, row)


@router.delete("/{task_id}/cancel")
async def cancel_task(task_id: str, state: State, principal: Admin) -> dict[str, str]:
    await tasks.cancel_task(state, task_id)  # either run id: the answer names the id the client gave
    return {"task_id": task_id, "status": "cancelled", "message": "Task cancelled"}


@router.get("", response_model=TaskList)
async def list_tasks(
    state: State,
    principal: Admin,
    response: Response,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: str | None = None,
) -> TaskList:
    """The Celery era's task list, newest first, over both engines (a test run is a task too); `?status=` in
    Celery's words (as the platform's front end sends it) or a `TaskStatus`."""
    statuses = tasks.task_statuses(status) if status else None
    limit = min(limit, TASK_LIST_CAP)
    legs, total = await tasks.list_tasks(state, limit, offset, statuses)
    response.headers["X-Total-Count"] = str(total)
    items = [task_list_item(leg) for leg in legs]
    return TaskList(tasks=items, total=total, limit=limit, offset=offset, has_more=offset + limit < total)


@router.get("/{task_id}", response_model=TaskInfo)
async def get_task(task_id: str, state: State, principal: Admin) -> TaskInfo:
    """The same answer as `/{task_id}/status` (the Celery-era front end reads it here)."""
    return await task_status(task_id, state, principal)


@router.delete("/{task_id}")
async def delete_task(task_id: str, state: State, principal: Admin) -> dict[str, str]:
    """The same as `/{task_id}/cancel`: the task's record stays (it is the run's history), the run stops."""
    return await cancel_task(task_id, state, principal)
