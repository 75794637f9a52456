"""The re-submission rules of `POST /api/tests`, one row per previous status (engine-free)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from common.legacy import ResultStatus
from gateway.jobs.errors import JobError
from gateway.jobs.submit import submit_test
from gateway.runtime import GatewayState
from gateway.store.models import Result
from tests.fast.conftest import ADMIN, MemoryGateway, body

pytestmark = pytest.mark.fast

CASES = [
    # the first run's status → the same commit again: the same row back (kept), or a new run (old renamed)
    (ResultStatus.SCHEDULED, "kept"),
    (ResultStatus.PENDING, "kept"),
    (ResultStatus.RUNNING, "kept"),
    (ResultStatus.PAUSED, "kept"),
    (ResultStatus.COMPLETED, "kept"),
    (ResultStatus.FAILED, "rerun"),
    (ResultStatus.CRASHED, "rerun"),
    (ResultStatus.CANCELLING, "rerun"),
    (ResultStatus.CANCELLED, "rerun"),
    (ResultStatus.NOT_AVAILABLE, "rerun"),
]


@pytest.mark.parametrize(("status", "expected"), CASES)
def test_the_same_commit_again(memory_gateway: MemoryGateway, status: ResultStatus, expected: str) -> None:
    async def test(state: GatewayState) -> None:
        first, new = await submit_test(state, ADMIN, body("abc"))
        assert new
        async with state.sessions() as session, session.begin():
            await session.execute(update(Result).where(Result.id == first.id).values(status=int(status)))
        again, new_again = await submit_test(state, ADMIN, body("abc"))
        async with state.sessions() as session:
            rows = {r.id: r for r in (await session.execute(select(Result))).scalars()}
        if expected == "kept":
            assert (again.id, new_again, len(rows)) == (first.id, False, 1)
            return
        assert new_again and again.id != first.id and len(rows) == 2
        assert rows[first.id].version_identifier == f"abc:{int(status)}"
        assert rows[again.id].version_identifier == "abc"

    memory_gateway.run(test)


def test_a_second_rerun_of_a_renamed_commit_gets_a_numbered_name(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        for _ in range(3):
            row, _new = await submit_test(state, ADMIN, body("abc"))
            async with state.sessions() as session, session.begin():
                await session.execute(update(Result).where(Result.id == row.id).values(status=1))
        async with state.sessions() as session:
            names = sorted(r.version_identifier for r in (await session.execute(select(Result))).scalars())
        assert names == ["abc", "abc:1", "abc:1:1"]  # the newest run keeps the commit as its name

    memory_gateway.run(test)


def test_max_submissions_counts_only_runs_that_gave_a_verdict(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        first, _ = await submit_test(state, ADMIN, body("one", content="week1/ex2", submit=True))
        async with state.sessions() as session, session.begin():  # a broken run does not count
            await session.execute(update(Result).where(Result.id == first.id).values(status=1))
        second, _ = await submit_test(state, ADMIN, body("two", content="week1/ex2", submit=True))
        with pytest.raises(JobError) as refused:
            await submit_test(state, ADMIN, body("three", content="week1/ex2", submit=True))
        assert (refused.value.status_code, refused.value.detail) == (
            400,
            "Reached max submissions for this course_content",
        )
        assert second.id != first.id

    memory_gateway.run(test)


REFUSED = [
    (body("x", content="week1/ex3"), 400, "execution_backend type not supported!"),
    (body("x", content="week9/none"), 404, "Course content not found"),
    (body("x", content="week1"), 404, "Course content is not an assignment"),
    (body("x", member="m-nobody"), 404, "Course member not found"),
]


@pytest.mark.parametrize(("request_body", "code", "detail"), REFUSED)
def test_refusals_carry_the_contracts_code_and_text(
    memory_gateway: MemoryGateway, request_body: object, code: int, detail: str
) -> None:
    async def test(state: GatewayState) -> None:
        with pytest.raises(JobError) as refused:
            await submit_test(state, ADMIN, request_body)  # type: ignore[arg-type]
        assert (refused.value.status_code, refused.value.detail) == (code, detail)
        assert not memory_gateway.engine.runs

    memory_gateway.run(test)
