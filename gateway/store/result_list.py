"""The legacy result list's query: filters, `latest`, a member restriction, newest first, one page and its total."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from gateway.store.models import Leg, Result
from gateway.store.runs import names_leg


@dataclass(frozen=True)
class ResultFilter:
    """The list's query parameters; None means "any"."""

    id: str | None = None
    submit: bool | None = None
    course_member_id: str | None = None
    course_content_id: str | None = None
    execution_backend_id: str | None = None
    test_system_id: str | None = None
    version_identifier: str | None = None
    status: int | None = None
    latest: bool | None = None

    def by_run_id(self) -> bool:
        """Whether this looks one run up by its run id (a flow finding its own row)."""
        return self.test_system_id is not None

    def admits(self, row: Any) -> bool:
        """Whether `row` (e.g. a shadow run's view) passes every other filter given. The platform's flow sends
        its job's backend, member and content ids with the run id (`commit_results`); `latest` holds for the one
        row of a run."""
        given = (
            ("id", self.id),
            ("submit", self.submit),
            ("course_member_id", self.course_member_id),
            ("course_content_id", self.course_content_id),
            ("execution_backend_id", self.execution_backend_id),
            ("version_identifier", self.version_identifier),
            ("status", self.status),
        )
        return all(value is None or getattr(row, name) == value for name, value in given)


def _conditions(f: ResultFilter, member_ids: frozenset[str] | None, run_role: str, open_runs_only: bool) -> list[Any]:
    conditions = []
    for column, value in (
        (Result.id, f.id),
        (Result.submit, f.submit),
        (Result.course_member_id, f.course_member_id),
        (Result.course_content_id, f.course_content_id),
        (Result.execution_backend_id, f.execution_backend_id),
        (Result.version_identifier, f.version_identifier),
        (Result.status, f.status),
    ):
        if value is not None:
            conditions.append(column == value)
    if f.test_system_id is not None:
        # A row shows the engine's run id once the engine has one (a Prefect flow run id), the gateway's leg id
        # before; a client may hold either: match both ways.
        by_engine = select(Leg.id).where(Leg.engine_run_id == f.test_system_id, Leg.role == run_role)
        by_leg = select(Leg.engine_run_id).where(Leg.id == f.test_system_id, Leg.role == run_role)
        conditions.append(
            or_(
                Result.test_system_id == f.test_system_id,
                Result.test_system_id.in_(by_engine),
                Result.test_system_id.in_(by_leg),
            )
        )
    if f.latest:
        newer = aliased(Result)
        conditions.append(
            ~exists().where(
                newer.course_member_id == Result.course_member_id,
                newer.course_content_id == Result.course_content_id,
                or_(
                    newer.created_at > Result.created_at,
                    and_(newer.created_at == Result.created_at, newer.id > Result.id),
                ),
            )
        )
    if member_ids is not None:
        conditions.append(Result.course_member_id.in_(sorted(member_ids)))
    if open_runs_only:
        # The row's current run (named by either id) is open.
        conditions.append(exists().where(Leg.finished == false(), names_leg(Result.test_system_id)))
    return conditions


async def result_page(
    sessions: async_sessionmaker[AsyncSession],
    f: ResultFilter,
    member_ids: frozenset[str] | None,
    skip: int,
    limit: int,
    run_role: str,
    open_runs_only: bool = False,
) -> tuple[int, list[Result]]:
    """The total that match, and the page: newest first (`created_at`, then id, descending).

    `member_ids`: only rows of these members (a student's own), or None for every row. `run_role`: the role
    of the leg whose engine run id `test_system_id` may name (the primary's). `open_runs_only`: only rows whose
    run is still open on its engine (its leg not finished)."""
    conditions = _conditions(f, member_ids, run_role, open_runs_only)
    async with sessions() as session:
        total = await session.scalar(select(func.count(Result.id)).where(*conditions))
        stmt = select(Result).where(*conditions).order_by(Result.created_at.desc(), Result.id.desc())
        rows = (await session.execute(stmt.offset(skip).limit(limit))).scalars().all()
    return total or 0, list(rows)
