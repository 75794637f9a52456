"""Issue 12.4: a submission deployment the gateway did not write gets the platform's own parameter set.

The legacy `submit-result` flow takes `submission, provider, full_path, token, assignment, module, user_id`;
`token` carries a credential NAME (or null), never a secret, and no URL carries credentials.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from gateway.jobs.legacy_submission import (
    LEGACY_SUBMISSION_PARAMETERS,
    legacy_submission_params,
    provider_and_full_path,
)
from gateway.jobs.submit import submit_test
from gateway.legs.states import LegRole
from gateway.runtime import GatewayState
from gateway.store.models import CourseMember, ExecutionBackend, Leg, Result
from tests.fast.conftest import ADMIN, MemoryGateway, body, report

pytestmark = pytest.mark.fast

SECRET = "glpat-s3cr3t-never-sent"


@pytest.mark.parametrize(
    ("url", "provider", "full_path"),
    [
        ("https://git.example.org/course/alice.git", "https://git.example.org", "course/alice"),
        (f"https://alice:{SECRET}@git.example.org/course/alice.git", "https://git.example.org", "course/alice"),
        (f"https://{SECRET}@git.example.org:8443/a/b/c", "https://git.example.org:8443", "a/b/c"),
        (f"ssh://git:{SECRET}@git.example.org/course/alice.git", "ssh://git@git.example.org", "course/alice"),
        ("file:///srv/repos/alice", "file://", "srv/repos/alice"),
    ],
)
def test_provider_and_full_path_rebuild_the_module_url_without_credentials(
    url: str, provider: str, full_path: str
) -> None:
    assert provider_and_full_path(url) == (provider, full_path)


def _row() -> Result:
    return Result(
        id="r1", course_member_id="m1", course_content_id="cc1", course_submission_group_id=None,
        execution_backend_id="b1", test_system_id="leg1", version_identifier="abc", status=0, result=0.75,
    )  # fmt: skip


@pytest.mark.parametrize(("credential", "token"), [("alice-git", "alice-git"), (None, None)])
def test_the_legacy_set_maps_the_row_the_repositories_and_a_credential_name(
    credential: str | None, token: str | None
) -> None:
    test_job: dict[str, Any] = {
        "user_id": "u1",
        "module": {"url": f"https://alice:{SECRET}@git.example.org/course/alice.git", "commit": "abc",
                   "path": "week1/ex1", "token": SECRET, "credential": credential},
        "reference": {"url": "https://git.example.org/course/assignments.git", "commit": "ref1", "path": "week1/ex1",
                      "credential": "course-ref"},
    }  # fmt: skip
    params = legacy_submission_params(test_job, _row())
    assert tuple(params) == LEGACY_SUBMISSION_PARAMETERS
    assert params["submission"] == {
        "id": "r1", "result_id": "r1", "course_member_id": "m1", "course_content_id": "cc1",
        "course_submission_group_id": None, "execution_backend_id": "b1", "test_system_id": "leg1",
        "version_identifier": "abc", "status": 0, "result": 0.75,
    }  # fmt: skip
    assert params["provider"] == "https://git.example.org" and params["full_path"] == "course/alice"
    assert params["token"] == token and params["user_id"] == "u1"
    assert params["module"]["url"] == "https://git.example.org/course/alice.git"
    assert params["module"]["token"] is None and params["module"]["credential"] == credential
    assert params["module"]["commit"] == "abc" and params["module"]["path"] == "week1/ex1"
    assert params["assignment"]["commit"] == "ref1" and params["assignment"]["credential"] == "course-ref"
    assert SECRET not in repr(params)


def test_a_reference_less_job_sends_assignment_null() -> None:
    params = legacy_submission_params({"module": {"url": "https://h/x/y.git"}}, _row())
    assert params["assignment"] is None and params["token"] is None and params["user_id"] is None


async def _submission_leg(state: GatewayState, row_id: str) -> Leg:
    async with state.sessions() as session:
        stmt = select(Leg).where(Leg.result_id == row_id, Leg.role == LegRole.SUBMISSION)
        return (await session.execute(stmt)).scalars().one()


@pytest.mark.parametrize("custom", [True, False])
def test_the_submission_leg_sends_the_legacy_set_only_to_a_named_custom_deployment(
    memory_gateway: MemoryGateway, custom: bool
) -> None:
    engine = memory_gateway.engine
    properties = {"deployment": "test-assignment/system"}
    if custom:
        properties["submission_deployment"] = "submit-result/legacy"

    async def test(state: GatewayState) -> None:
        async with state.sessions() as session, session.begin():
            await session.execute(
                update(ExecutionBackend).where(ExecutionBackend.slug == "prefect-main").values(properties=properties)
            )
            await session.execute(update(CourseMember).where(CourseMember.id == "m-alice").values(credential="a-git"))
        row, _ = await submit_test(state, ADMIN, body("s1", content="week2/ex1", submit=True))
        engine.succeed(row.test_system_id, report(2, 2))
        await state.reconciler.tick()
        leg = await _submission_leg(state, row.id)
        await state.reconciler.tick()  # dispatches the submission leg (due at once)
        sent = engine.runs[leg.id].job
        assert sent.params == leg.spec["params"]
        if custom:
            assert sent.properties["deployment"] == "submit-result/legacy"
            assert tuple(sent.params) == LEGACY_SUBMISSION_PARAMETERS
            assert sent.params["token"] == "a-git" and sent.params["user_id"] == "u-alice"
            assert sent.params["submission"]["id"] == row.id and sent.params["module"]["commit"] == "s1"
            assert (sent.params["provider"], sent.params["full_path"]) == ("file://", "nonexistent/alice")
        else:
            assert "deployment" not in sent.properties
            assert set(sent.params) == {"submission"} and sent.params["submission"]["result_id"] == row.id

    memory_gateway.run(test)
