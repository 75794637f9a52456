"""Admin CRUD for the catalog the dispatcher needs (course contents, members) and for users.

All three follow one pattern (list, create, read, patch, delete), so one small factory builds them.
"""

from typing import Any

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from gateway.api.auth import require
from gateway.api.deps import Login, State
from gateway.schemas import (
    CourseContentGet,
    CourseContentIn,
    CourseContentPatch,
    CourseMemberGet,
    CourseMemberIn,
    CourseMemberPatch,
    UserGet,
    UserIn,
    UserPatch,
)
from gateway.store.accounts import hash_password
from gateway.store.models import CourseContent, CourseMember, User, new_id

router = APIRouter(prefix="/admin")


async def _prepare(model: type[Any], values: dict[str, Any]) -> dict[str, Any]:
    """Users store a hash, never the password; the hash is slow, so it runs in a thread."""
    if model is User and "password" in values:
        password = values.pop("password")
        if password is not None:
            values["password_hash"] = await run_in_threadpool(hash_password, password)
    return values


LAST_ADMIN = "The last admin account cannot be removed or demoted: create another admin first"


async def _keeps_an_admin(session: AsyncSession, model: type[Any], row: Any, new_role: str | None) -> None:
    """Refuse (409) to delete or demote the only admin: nobody could manage the gateway afterwards."""
    if model is not User or row.role != "admin" or new_role == "admin":
        return
    admins = await session.scalar(select(func.count(User.id)).where(User.role == "admin"))
    if (admins or 0) <= 1:
        raise HTTPException(status_code=409, detail=LAST_ADMIN)


def crud(path: str, model: type[Any], create: type[BaseModel], patch: type[BaseModel], get: type[BaseModel]) -> None:
    noun = path.rstrip("s").replace("-", " ")

    def missing() -> HTTPException:
        return HTTPException(status_code=404, detail=f"{noun.capitalize()} not found")

    def conflict() -> HTTPException:
        return HTTPException(status_code=409, detail=f"A {noun} with this id or unique key already exists")

    @router.get(f"/{path}", response_model=list[get], name=f"list_{path}")  # type: ignore[valid-type]
    async def list_items(state: State, principal: Login, response: Response, skip: int = 0, limit: int = 100) -> Any:
        require(principal, "admin")
        async with state.sessions() as session:
            total = await session.scalar(select(func.count(model.id)))
            rows = (
                await session.execute(select(model).order_by(model.id).offset(max(0, skip)).limit(max(1, limit)))
            ).scalars()
            response.headers["X-Total-Count"] = str(total or 0)
            return list(rows)

    @router.post(f"/{path}", response_model=get, name=f"create_{path}")
    async def create_item(body: create, state: State, principal: Login) -> Any:  # type: ignore[valid-type]
        require(principal, "admin")
        values = await _prepare(model, body.model_dump())  # type: ignore[attr-defined]
        values["id"] = values.get("id") or new_id()
        row = model(**values)
        try:
            async with state.sessions() as session, session.begin():
                session.add(row)
        except IntegrityError:
            raise conflict() from None
        state.auth.forget()
        return row

    @router.get(f"/{path}/{{item_id}}", response_model=get, name=f"get_{path}")
    async def get_item(item_id: str, state: State, principal: Login) -> Any:
        require(principal, "admin")
        async with state.sessions() as session:
            row = await session.get(model, item_id)
        if row is None:
            raise missing()
        return row

    @router.patch(f"/{path}/{{item_id}}", response_model=get, name=f"update_{path}")
    async def update_item(item_id: str, body: patch, state: State, principal: Login) -> Any:  # type: ignore[valid-type]
        require(principal, "admin")
        values = await _prepare(model, body.model_dump(exclude_unset=True))  # type: ignore[attr-defined]
        try:
            async with state.sessions() as session, session.begin():
                row = await session.get(model, item_id)
                if row is None:
                    raise missing()
                if "role" in values:
                    await _keeps_an_admin(session, model, row, values["role"])
                for name, value in values.items():
                    setattr(row, name, value)
        except IntegrityError:
            raise conflict() from None
        state.auth.forget()
        return row

    @router.delete(f"/{path}/{{item_id}}", name=f"delete_{path}")
    async def delete_item(item_id: str, state: State, principal: Login) -> dict[str, str]:
        require(principal, "admin")
        try:
            async with state.sessions() as session, session.begin():
                row = await session.get(model, item_id)
                if row is None:
                    raise missing()
                await _keeps_an_admin(session, model, row, None)
                await session.delete(row)
        except IntegrityError:
            raise conflict() from None
        state.auth.forget()
        return {"id": item_id, "status": "deleted"}


crud("course-contents", CourseContent, CourseContentIn, CourseContentPatch, CourseContentGet)
crud("course-members", CourseMember, CourseMemberIn, CourseMemberPatch, CourseMemberGet)
crud("users", User, UserIn, UserPatch, UserGet)
