"""Reading results (students: only their own), the bare-int status, system status, and the worker write-back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from gateway.api.auth import GuardedRoute
from gateway.api.deps import AdminOrStudent, AdminOrWorker, AnyRole, State
from gateway.api.views import result_get, result_list
from gateway.jobs import results
from gateway.jobs.results import ResultFilter
from gateway.schemas import ResultGet, ResultList, ResultUpdate

router = APIRouter(route_class=GuardedRoute)
# The most rows one list answer holds; a larger `limit` is capped to it.
LIST_CAP = 1000


@router.get("/results", response_model=list[ResultList])
async def list_results(
    state: State,
    principal: AnyRole,
    response: Response,
    skip: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1)] = 100,
    id: str | None = None,
    submit: bool | None = None,
    course_member_id: str | None = None,
    course_content_id: str | None = None,
    execution_backend_id: str | None = None,
    test_system_id: str | None = None,
    version_identifier: str | None = None,
    status: int | None = None,
    latest: bool | None = None,
) -> list[ResultList]:
    """Newest first (`created_at` descending), as the legacy list; `latest=true` keeps each member's newest row
    per course content; a `limit` above `LIST_CAP` is answered with `LIST_CAP` rows (legacy clients send large
    limits to mean "all"; a 422 would break them)."""
    query = ResultFilter(
        id, submit, course_member_id, course_content_id, execution_backend_id, test_system_id,
        version_identifier, status, latest,
    )  # fmt: skip
    total, rows = await results.list_results(state, principal, query, skip, min(limit, LIST_CAP))
    response.headers["X-Total-Count"] = str(total)
    return [result_list(row) for row in rows]


@router.get("/results/{result_id}", response_model=ResultGet)
async def get_result(result_id: str, state: State, principal: AdminOrStudent) -> ResultGet:
    return result_get(await results.fresh_visible_row(state, principal, result_id))


@router.get("/results/{result_id}/status", response_model=int)
async def get_result_status(result_id: str, state: State, principal: AdminOrStudent) -> int:
    return int((await results.fresh_visible_row(state, principal, result_id)).status)


@router.patch("/results/{result_id}", response_model=ResultGet)
async def write_back(result_id: str, body: ResultUpdate, state: State, principal: AdminOrWorker) -> ResultGet:
    """The legacy write-back of a flow the gateway did not write: updates the row and its primary leg."""
    return result_get(await results.write_back(state, principal, result_id, body.model_dump(exclude_unset=True)))


@router.get("/system/status/{test_system_id}")
async def system_status(test_system_id: str, state: State, principal: AdminOrStudent) -> dict[str, str]:
    return await results.system_status(state, principal, test_system_id)
