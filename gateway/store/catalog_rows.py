"""Generic reads and writes of one catalog table (course contents, members, users, execution backends).

The admin API's CRUD is one pattern over several tables; this module is its SQL. A unique key that refuses
a write surfaces as `RowConflict`, a guard's refusal as whatever the guard raises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.schemas import Role
from gateway.store.models import CourseContent, User

# Called inside the write's transaction before a change (values) or a delete (None) is applied to `row`.
Guard = Callable[[AsyncSession, Any, dict[str, Any] | None], Awaitable[None]]


class RowConflict(Exception):
    """The write would break a unique key or a reference."""


class LastAdmin(Exception):
    """The change would leave the gateway without an admin account."""


class RowInUse(Exception):
    """Other rows still refer to this one."""


async def page(
    sessions: async_sessionmaker[AsyncSession], model: type[Any], order_by: Any, skip: int, limit: int
) -> tuple[int, list[Any]]:
    async with sessions() as session:
        total = await session.scalar(select(func.count(model.id)))
        rows = await session.execute(select(model).order_by(order_by).offset(skip).limit(limit))
        return total or 0, list(rows.scalars())


async def get(sessions: async_sessionmaker[AsyncSession], model: type[Any], row_id: str) -> Any | None:
    async with sessions() as session:
        return await session.get(model, row_id)


async def insert(sessions: async_sessionmaker[AsyncSession], row: Any) -> Any:
    try:
        async with sessions() as session, session.begin():
            session.add(row)
    except IntegrityError:
        raise RowConflict from None
    return row


async def update(
    sessions: async_sessionmaker[AsyncSession],
    model: type[Any],
    row_id: str,
    change: Callable[[Any], None],
    guard: Guard | None = None,
    values: dict[str, Any] | None = None,
) -> Any | None:
    """Apply `change` to the row in one transaction (after `guard`); None when the row does not exist."""
    try:
        async with sessions() as session, session.begin():
            row = await session.get(model, row_id)
            if row is None:
                return None
            if guard is not None:
                await guard(session, row, values or {})
            change(row)
    except IntegrityError:
        raise RowConflict from None
    return row


async def delete(
    sessions: async_sessionmaker[AsyncSession], model: type[Any], row_id: str, guard: Guard | None = None
) -> bool:
    """False when the row does not exist."""
    try:
        async with sessions() as session, session.begin():
            row = await session.get(model, row_id)
            if row is None:
                return False
            if guard is not None:
                await guard(session, row, None)
            await session.delete(row)
    except IntegrityError:
        raise RowConflict from None
    return True


async def keeps_an_admin(session: AsyncSession, row: Any, values: dict[str, Any] | None) -> None:
    """Refuse (`LastAdmin`) to delete or demote the only admin: nobody could manage the gateway afterwards."""
    if values is not None and "role" not in values:
        return
    new_role = None if values is None else values["role"]
    if row.role != Role.ADMIN or new_role == Role.ADMIN:
        return
    admins = await session.scalar(select(func.count(User.id)).where(User.role == Role.ADMIN))
    if (admins or 0) <= 1:
        raise LastAdmin


async def backend_unused(session: AsyncSession, row: Any, values: dict[str, Any] | None) -> None:
    """Refuse (`RowInUse`) to delete an execution backend that course contents still name."""
    if values is not None:
        return
    used = await session.scalar(
        select(func.count(CourseContent.id)).where(CourseContent.execution_backend_id == row.id)
    )
    if used:
        raise RowInUse
