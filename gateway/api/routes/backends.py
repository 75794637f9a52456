"""The legacy `/execution-backends` CRUD (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from gateway.api.auth import require
from gateway.api.deps import Login, State
from gateway.schemas import ExecutionBackendCreate, ExecutionBackendGet, ExecutionBackendUpdate
from gateway.store.models import CourseContent, ExecutionBackend, new_id

router = APIRouter(prefix="/execution-backends")


def _missing() -> HTTPException:
    return HTTPException(status_code=404, detail="Execution backend not found")


def _taken() -> HTTPException:
    return HTTPException(status_code=409, detail="An execution backend with this id or slug already exists")


@router.get("", response_model=list[ExecutionBackendGet])
async def list_backends(
    state: State, principal: Login, response: Response, skip: int = 0, limit: int = 100
) -> list[ExecutionBackend]:
    require(principal, "admin")
    async with state.sessions() as session:
        total = await session.scalar(select(func.count(ExecutionBackend.id)))
        rows = (
            await session.execute(
                select(ExecutionBackend).order_by(ExecutionBackend.slug).offset(max(0, skip)).limit(max(1, limit))
            )
        ).scalars()
        response.headers["X-Total-Count"] = str(total or 0)
        return list(rows)


@router.post("", response_model=ExecutionBackendGet)
async def create_backend(body: ExecutionBackendCreate, state: State, principal: Login) -> ExecutionBackend:
    require(principal, "admin")
    row = ExecutionBackend(
        id=body.id or new_id(),
        type=body.type,
        slug=body.slug,
        properties=body.properties or {},
        created_by=principal.user_id,
        updated_by=principal.user_id,
    )
    try:
        async with state.sessions() as session, session.begin():
            session.add(row)
    except IntegrityError:
        raise _taken() from None
    return row


@router.get("/{backend_id}", response_model=ExecutionBackendGet)
async def get_backend(backend_id: str, state: State, principal: Login) -> ExecutionBackend:
    require(principal, "admin")
    async with state.sessions() as session:
        row = await session.get(ExecutionBackend, backend_id)
    if row is None:
        raise _missing()
    return row


@router.patch("/{backend_id}", response_model=ExecutionBackendGet)
async def update_backend(
    backend_id: str, body: ExecutionBackendUpdate, state: State, principal: Login
) -> ExecutionBackend:
    require(principal, "admin")
    try:
        async with state.sessions() as session, session.begin():
            row = await session.get(ExecutionBackend, backend_id)
            if row is None:
                raise _missing()
            for name, value in body.model_dump(exclude_unset=True).items():
                if value is not None:
                    setattr(row, name, value)
            row.version = (row.version or 0) + 1
            row.updated_by = principal.user_id
    except IntegrityError:
        raise _taken() from None
    return row


@router.delete("/{backend_id}")
async def delete_backend(backend_id: str, state: State, principal: Login) -> dict[str, str]:
    require(principal, "admin")
    async with state.sessions() as session, session.begin():
        row = await session.get(ExecutionBackend, backend_id)
        if row is None:
            raise _missing()
        used = await session.scalar(
            select(func.count(CourseContent.id)).where(CourseContent.execution_backend_id == backend_id)
        )
        if used:
            raise HTTPException(status_code=409, detail="Execution backend is used by course contents")
        await session.delete(row)
    return {"id": backend_id, "status": "deleted"}
