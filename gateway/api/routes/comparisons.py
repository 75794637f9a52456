"""Comparisons of shadow runs (admin only): one job's, a filtered page, the summary; and the shadow settings.

Nothing here collides with a legacy route: `/results/{id}/comparison` is a new leaf under a legacy path, and
`/comparisons`, `/admin/shadow`, `/admin/compare-rules` are new.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel, Field

from gateway.api.auth import GuardedRoute
from gateway.api.deps import Admin, State
from gateway.compare import queries
from gateway.compare.outcomes import ComparisonOutcome
from gateway.engines.shadowing import ExperimentKind
from gateway.jobs import scorecard, shadow_admin
from gateway.jobs.errors import NotFound

router = APIRouter(route_class=GuardedRoute)


@router.get("/results/{result_id}/comparison")
async def result_comparison(result_id: str, state: State, principal: Admin) -> dict[str, Any]:
    found = await queries.for_result(state.sessions, result_id)
    if found is None:
        raise NotFound("No comparison for this result")
    return found


def _filter(
    execution_backend: str | None,
    course_content_id: str | None,
    outcome: ComparisonOutcome | None,
    kind: ExperimentKind | None,
    since: datetime | None,
) -> queries.ComparisonFilter:
    return queries.ComparisonFilter(execution_backend, course_content_id, outcome, kind, since)


@router.get("/comparisons")
async def list_comparisons(
    state: State,
    principal: Admin,
    response: Response,
    execution_backend: str | None = None,
    course_content_id: str | None = None,
    outcome: ComparisonOutcome | None = None,
    kind: ExperimentKind | None = None,
    since: datetime | None = None,
    skip: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    f = _filter(execution_backend, course_content_id, outcome, kind, since)
    total, items = await queries.page(state.sessions, f, skip, limit)
    response.headers["X-Total-Count"] = str(total)
    return items


@router.get("/comparisons/summary")
async def comparison_summary(
    state: State,
    principal: Admin,
    group_by: queries.GroupBy = queries.GroupBy.BACKEND,
    execution_backend: str | None = None,
    course_content_id: str | None = None,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    f = _filter(execution_backend, course_content_id, None, None, since)
    return await scorecard.comparison_summary(state.sessions, group_by, f)


# --------------------------------------------------------------------------------------------- shadow settings
class ShadowSettingIn(BaseModel):
    """Only the fields given change; a new setting starts from enabled, fraction 0, cap 100, deadline 1800 s."""

    enabled: bool | None = None
    engine: str | None = None
    fraction: float | None = Field(None, ge=0, le=1)
    max_in_flight: int | None = Field(None, ge=0)
    deadline_seconds: int | None = Field(None, gt=0)
    aa_fraction: float | None = Field(None, ge=0, le=1)
    properties: dict[str, Any] | None = None


@router.get("/admin/shadow")
async def show_shadow(state: State, principal: Admin) -> dict[str, Any]:
    return await shadow_admin.show_shadow(state.sessions)


@router.put("/admin/shadow/backends/{backend}")
async def put_backend_shadow(backend: str, body: ShadowSettingIn, state: State, principal: Admin) -> dict[str, Any]:
    values = body.model_dump(exclude_unset=True)
    return await shadow_admin.set_shadow(
        state.sessions, backend=backend, content=None, values=values, user_id=principal.user_id
    )


@router.put("/admin/shadow/contents/{content_id}")
async def put_content_shadow(content_id: str, body: ShadowSettingIn, state: State, principal: Admin) -> dict[str, Any]:
    values = body.model_dump(exclude_unset=True)
    return await shadow_admin.set_shadow(
        state.sessions, backend=None, content=content_id, values=values, user_id=principal.user_id
    )


@router.delete("/admin/shadow/backends/{backend}")
async def delete_backend_shadow(backend: str, state: State, principal: Admin) -> dict[str, str]:
    await shadow_admin.delete_shadow(state.sessions, backend=backend, content=None)
    return {"status": "deleted"}


@router.delete("/admin/shadow/contents/{content_id}")
async def delete_content_shadow(content_id: str, state: State, principal: Admin) -> dict[str, str]:
    await shadow_admin.delete_shadow(state.sessions, backend=None, content=content_id)
    return {"status": "deleted"}


@router.get("/admin/compare-rules")
async def get_compare_rules(state: State, principal: Admin) -> dict[str, Any]:
    """The admin's overrides (`{}`: the shipped rules apply as they are)."""
    return await shadow_admin.get_compare_rules(state.sessions)


@router.put("/admin/compare-rules")
async def put_compare_rules(
    state: State, principal: Admin, overrides: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    return await shadow_admin.put_compare_rules(state.sessions, overrides, principal.user_id)
