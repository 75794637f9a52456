"""Reading results (students: only their own), the bare-int status, system status, and the worker write-back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from sqlalchemy import func, or_, select

from backends.interface import LegPhase
from gateway.auth import Principal, require
from gateway.legs import finish, row_is_final, status_to_phase
from gateway.routes.deps import Login, State
from gateway.schemas import ResultGet, ResultList, ResultUpdate
from gateway.state import GatewayState
from gateway.store.models import Leg, Result, utcnow
from gateway.views import result_get, result_list, status_name

router = APIRouter()


def _missing() -> HTTPException:
    return HTTPException(status_code=404, detail="Result not found")


async def _visible_row(state: GatewayState, principal: Principal, result_id: str) -> Result:
    """The row, or 404 both when it does not exist and when it is someone else's (existence must not leak)."""
    async with state.sessions() as session:
        row = await session.get(Result, result_id)
    if row is None or not principal.may_see_member(row.course_member_id):
        raise _missing()
    return row


async def _refreshed(state: GatewayState, row: Result) -> Result:
    """An in-flight row is refreshed from its engine first, so a client sees completion as soon as possible."""
    if row_is_final(row) or not row.test_system_id:
        return row
    await state.reconciler.refresh(row.test_system_id)
    async with state.sessions() as session:
        fresh = await session.get(Result, row.id)
    return fresh or row


@router.get("/results", response_model=list[ResultList])
async def list_results(
    state: State,
    principal: Login,
    response: Response,
    skip: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    id: str | None = None,
    submit: bool | None = None,
    course_member_id: str | None = None,
    course_content_id: str | None = None,
    execution_backend_id: str | None = None,
    test_system_id: str | None = None,
    version_identifier: str | None = None,
    status: int | None = None,
) -> list[ResultList]:
    require(principal, "admin", "worker", "student")
    conditions = []
    for column, value in (
        (Result.id, id),
        (Result.submit, submit),
        (Result.course_member_id, course_member_id),
        (Result.course_content_id, course_content_id),
        (Result.execution_backend_id, execution_backend_id),
        (Result.version_identifier, version_identifier),
        (Result.status, status),
    ):
        if value is not None:
            conditions.append(column == value)
    if test_system_id is not None:
        # The run id a flow knows is its engine's (a Prefect flow run id), not the gateway's leg id: match both.
        by_engine = select(Leg.id).where(Leg.engine_run_id == test_system_id, Leg.role == "primary")
        conditions.append(or_(Result.test_system_id == test_system_id, Result.test_system_id.in_(by_engine)))
    if principal.role == "student":
        conditions.append(Result.course_member_id.in_(sorted(principal.course_member_ids)))
    async with state.sessions() as session:
        total = await session.scalar(select(func.count(Result.id)).where(*conditions))
        rows = (
            (
                await session.execute(
                    select(Result).where(*conditions).order_by(Result.created_at, Result.id).offset(skip).limit(limit)
                )
            )
            .scalars()
            .all()
        )
    response.headers["X-Total-Count"] = str(total or 0)
    return [result_list(row) for row in rows]


@router.get("/results/{result_id}", response_model=ResultGet)
async def get_result(result_id: str, state: State, principal: Login) -> ResultGet:
    require(principal, "admin", "student")
    row = await _visible_row(state, principal, result_id)
    return result_get(await _refreshed(state, row))


@router.get("/results/{result_id}/status", response_model=int)
async def get_result_status(result_id: str, state: State, principal: Login) -> int:
    require(principal, "admin", "student")
    row = await _visible_row(state, principal, result_id)
    return int((await _refreshed(state, row)).status)


@router.patch("/results/{result_id}", response_model=ResultGet)
async def write_back(result_id: str, body: ResultUpdate, state: State, principal: Login) -> ResultGet:
    """The legacy write-back of a flow the gateway did not write: updates the row and its primary leg."""
    require(principal, "admin", "worker")
    changes = body.model_dump(exclude_unset=True)
    async with state.sessions() as session, session.begin():
        row = await session.get(Result, result_id, with_for_update=state.is_postgres)
        if row is None:
            raise _missing()
        for name in ("result", "result_json", "properties"):
            if name in changes:
                setattr(row, name, changes[name])
        if changes.get("status") is not None:
            row.status = int(changes["status"])
        row.updated_by = principal.user_id
        row.updated_at = utcnow()
        leg = await session.get(Leg, row.test_system_id) if row.test_system_id else None
        if leg is not None and not leg.finished and changes.get("status") is not None:
            phase = status_to_phase(int(changes["status"]))
            if phase is not None and phase.is_final:
                # The row already holds what the worker wrote: close the leg without touching the row again.
                finish(leg, None, utcnow(), phase)
                leg.payload = None
                leg.outcome = f"{phase.value} (write-back)"
            elif phase is not None:
                leg.phase = phase.value
                if phase == LegPhase.RUNNING and leg.started_at is None:
                    leg.started_at = utcnow()
    return result_get(row)


@router.get("/system/status/{test_system_id}")
async def system_status(test_system_id: str, state: State, principal: Login) -> dict[str, str]:
    require(principal, "admin", "student")
    async with state.sessions() as session:
        row = (
            await session.execute(select(Result).where(Result.test_system_id == test_system_id))
        ).scalar_one_or_none()
        leg = await session.get(Leg, test_system_id)
    if row is None and leg is None:
        raise HTTPException(status_code=404, detail="Test run not found")
    if row is None:
        if not principal.is_admin:
            raise HTTPException(status_code=404, detail="Test run not found")
        if leg is not None and not leg.finished:
            await state.reconciler.refresh(leg.id)
            async with state.sessions() as session:
                leg = await session.get(Leg, test_system_id)
        assert leg is not None
        return {"status": LegPhase(leg.phase).result_status().name}
    if not principal.may_see_member(row.course_member_id):
        raise HTTPException(status_code=404, detail="Test run not found")
    row = await _refreshed(state, row)
    answer = {"status": status_name(row.status)}
    if leg is not None and leg.dispatch_state == "pending" and leg.last_error:
        answer["message"] = f"waiting for the engine to accept the job: {leg.last_error}"
    return answer
