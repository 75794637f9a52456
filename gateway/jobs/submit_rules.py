"""The submit path's lookups and legacy rules: which content and member, who may submit what, what counts.

The catalog (content with its backend, members) is read through the cache (`gateway.store.catalog_cache`); the
run lookups read `result` rows. The order in which `gateway.jobs.submit` applies them is the contract's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.legacy import ResultStatus
from gateway.jobs.errors import BadJobRequest, NotAllowed, NotFound
from gateway.schemas import Role, TestCreate
from gateway.store.accounts import Principal
from gateway.store.catalog_cache import CatalogCache
from gateway.store.models import CourseContent, CourseMember, ExecutionBackend, Result

# A run in one of these states is answered again (no new run); one in RERUN is run again under a new row.
KEEP = {
    ResultStatus.SCHEDULED,
    ResultStatus.PENDING,
    ResultStatus.RUNNING,
    ResultStatus.PAUSED,
    ResultStatus.COMPLETED,
}
RERUN = {
    ResultStatus.FAILED,
    ResultStatus.CRASHED,
    ResultStatus.CANCELLING,
    ResultStatus.CANCELLED,
    ResultStatus.NOT_AVAILABLE,
}
# Runs that broke do not count against the maximum: the student did not get a verdict from them.
NOT_COUNTED = [int(s) for s in (ResultStatus.FAILED, ResultStatus.CANCELLED, ResultStatus.CRASHED)]


async def content_for(
    sessions: async_sessionmaker[AsyncSession], catalog: CatalogCache, body: TestCreate
) -> tuple[CourseContent, ExecutionBackend | None]:
    if body.course_content_id:
        by, value = "id", body.course_content_id
    elif body.course_content_path:
        by, value = "path", body.course_content_path
    elif body.directory:
        by, value = "directory", body.directory
    else:
        raise NotFound("Course content not found: give course_content_id, course_content_path or directory")
    cache_key = ("content", by, value)
    pair: tuple[CourseContent, ExecutionBackend | None] | None = catalog.get(cache_key)
    if pair is None:
        # Built only on a miss: an SQL expression costs more than the cache hit it would be wasted on.
        stmt = select(CourseContent, ExecutionBackend).outerjoin(
            ExecutionBackend, ExecutionBackend.id == CourseContent.execution_backend_id
        )
        column = getattr(CourseContent, by) == value
        async with sessions() as session:
            found = (await session.execute(stmt.where(column).limit(2))).all()
        if not found:
            raise NotFound("Course content not found")
        if len(found) > 1:
            raise BadJobRequest("More than one course content has this directory; give course_content_id")
        pair = (found[0][0], found[0][1])
        catalog.put(cache_key, pair)
    content, backend = pair
    if content.kind != "assignment":
        raise NotFound("Course content is not an assignment")
    return content, backend


async def member_of(sessions: async_sessionmaker[AsyncSession], catalog: CatalogCache, member_id: str) -> CourseMember:
    member: CourseMember | None = catalog.get(("member", member_id))
    if member is None:
        async with sessions() as session:
            member = await session.get(CourseMember, member_id)
        if member is None:
            raise NotFound("Course member not found")
        catalog.put(("member", member_id), member)
    return member


def member_id_for(principal: Principal, body: TestCreate) -> str:
    """The member the run is for: a student's own membership (the body's id only picks among them)."""
    if principal.is_admin:
        if not body.course_member_id:
            raise BadJobRequest("course_member_id is required when an admin submits")
        return body.course_member_id
    if principal.role != Role.STUDENT or not principal.course_member_ids:
        raise NotAllowed()
    if body.course_member_id:
        if body.course_member_id not in principal.course_member_ids:
            raise NotAllowed()
        return body.course_member_id
    return sorted(principal.course_member_ids)[0]


PROVIDER_SCHEMES = ("https", "ssh")


def check_student_repository(body: TestCreate, allowed_hosts: list[str]) -> None:
    """A student may point at a repository provider, never at a path on the worker (`file:///`, `project: "/"`)."""
    if not (body.provider_url or body.project):
        return
    parts = urlsplit(body.provider_url or "")
    if parts.scheme.lower() not in PROVIDER_SCHEMES or not parts.hostname:
        raise BadJobRequest("provider_url must be a repository provider URL (https or ssh)")
    # Which hosts: `credential_binding.check_student_provider`, once the member (and their own host) is known.
    project = (body.project or "").strip()
    if not project.strip("/") or project.startswith("/") or ".." in project.split("/") or "\\" in project:
        raise BadJobRequest("project must be a repository path on the provider, e.g. group/name")


def _run_match(member_id: str, content_id: str, commit: str) -> Any:
    return and_(
        Result.course_member_id == member_id,
        Result.course_content_id == content_id,
        Result.version_identifier == commit,
    )


async def existing_run(
    sessions: async_sessionmaker[AsyncSession], member_id: str, content_id: str, commit: str
) -> Result | None:
    async with sessions() as session:
        return (await session.execute(select(Result).where(_run_match(member_id, content_id, commit)))).scalar()


async def count_and_existing(
    sessions: async_sessionmaker[AsyncSession], member_id: str, content_id: str, commit: str
) -> tuple[int, Result | None]:
    """The counted submissions and the run for this commit (if any), in one round trip."""
    counted = (
        select(func.count(Result.id))
        .where(
            Result.course_member_id == member_id,
            Result.course_content_id == content_id,
            Result.submit.is_(True),
            Result.status.not_in(NOT_COUNTED),
        )
        .scalar_subquery()
    )
    one = select(literal(1).label("one")).subquery()
    stmt = (
        select(counted.label("counted"), Result)
        .select_from(one)
        .outerjoin(Result, _run_match(member_id, content_id, commit))
    )
    async with sessions() as session:
        count, existing = (await session.execute(stmt)).one()
    return int(count or 0), existing
