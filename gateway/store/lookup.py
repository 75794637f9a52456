"""Finding a catalog row by what an operator types: a backend by slug or id, a course content by id or path.

The admin API, the CLI (shadow, cutover, replay) and the comparison filters all accept either form; the
conditions live here once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.store.models import CourseContent, ExecutionBackend


def backend_named(key: str) -> Any:
    """The condition: the execution backend whose slug or id is `key`."""
    return or_(ExecutionBackend.slug == key, ExecutionBackend.id == key)


def content_named(key: str) -> Any:
    """The condition: the course content whose id or path is `key`."""
    return or_(CourseContent.id == key, CourseContent.path == key)


async def backend_id(session: AsyncSession, key: str) -> str | None:
    return (await session.execute(select(ExecutionBackend.id).where(backend_named(key)).limit(1))).scalar()


async def content_id(session: AsyncSession, key: str) -> str | None:
    return (await session.execute(select(CourseContent.id).where(content_named(key)).limit(1))).scalar()
