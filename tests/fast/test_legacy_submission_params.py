"""Issues 12.4 and 25.1: a submission deployment the gateway did not write gets what the platform sent its own.

The platform's `submit-result` flow takes one parameter, `submission`: its `Submission` model dumped with
`exclude_none`. `token` carries a credential NAME ("" for none), never a secret, and no URL carries credentials.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from backends.prefect.testing_flows import PlatformSubmission
from gateway.jobs.legacy_submission import (
    LEGACY_SUBMISSION_KEYS,
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


ASSIGNMENT = {"id": "cc1", "path": "week1.ex1", "directory": "week1/ex1", "course_content_type_id": "exercise",
              "reference_commit": "ref1", "max_submissions": None, "execution_backend_id": "b1"}  # fmt: skip


@pytest.mark.parametrize(("credential", "token"), [("alice-git", "alice-git"), (None, "")])
def test_one_submission_parameter_the_platforms_model_parses(credential: str | None, token: str) -> None:
    test_job: dict[str, Any] = {
        "user_id": "u1", "course_content_id": "cc1", "execution_backend_id": "b1",
        "module": {"url": f"https://alice:{SECRET}@git.example.org/course/alice.git", "commit": "abc",
                   "path": "week1/ex1", "token": SECRET, "credential": credential},
        "reference": {"url": "https://git.example.org/course/assignments.git", "commit": "ref1", "path": "week1/ex1",
                      "credential": "course-ref"},
    }  # fmt: skip
    params = legacy_submission_params(test_job, _row(), ASSIGNMENT)
    assert set(params) == {"submission"}
    sent = params["submission"]
    assert tuple(sent) == LEGACY_SUBMISSION_KEYS
    parsed = PlatformSubmission.model_validate(sent)  # the platform's types: every required field there
    assert parsed.provider == "https://git.example.org" and parsed.full_path == "course/alice"
    assert parsed.token == token and parsed.user_id == "u1" and parsed.result_id == "r1"
    assert parsed.submission.url == parsed.module.url == "https://git.example.org/course/alice.git"
    assert parsed.module.commit == "abc" and parsed.module.path == "week1/ex1"
    assert "token" not in sent["module"] and "token" not in sent["submission"]  # exclude_none: no secret field
    assert sent["module"].get("credential") == credential
    assignment = parsed.assignment
    assert (assignment.id, assignment.path, assignment.course_content_type_id) == ("cc1", "week1.ex1", "exercise")
    assert assignment.version_identifier == "ref1" and assignment.position == 0.0
    assert assignment.properties is not None and assignment.properties.gitlab is not None
    assert assignment.properties.gitlab.directory == "week1/ex1"
    assert None not in _values(sent)  # dumped with exclude_none, as the platform did
    assert SECRET not in repr(params)


def _values(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [v for value in tree.values() for v in _values(value)]
    return [tree]


def test_a_leg_from_before_the_spec_carried_the_content_still_parses() -> None:
    job = {"user_id": "u1", "course_content_id": "cc1", "module": {"url": "https://h/x/y.git", "path": "w/e"}}
    parsed = PlatformSubmission.model_validate(legacy_submission_params(job, _row())["submission"])
    assert (parsed.assignment.path, parsed.assignment.id, parsed.token) == ("w.e", "cc1", "")


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
            submission = PlatformSubmission.model_validate(sent.params["submission"])
            assert set(sent.params) == {"submission"}
            assert submission.token == "a-git" and submission.user_id == "u-alice"
            assert submission.result_id == row.id and submission.module.commit == "s1"
            assert (submission.provider, submission.full_path) == ("file://", "nonexistent/alice")
            assert (submission.assignment.id, submission.assignment.path) == ("cc-prefect", "week2.ex1")
        else:
            assert "deployment" not in sent.properties
            assert set(sent.params) == {"submission"} and sent.params["submission"]["result_id"] == row.id

    memory_gateway.run(test)


def test_a_refused_submission_is_visible_on_the_row_and_may_be_asked_again(memory_gateway: MemoryGateway) -> None:
    """25.1: the engine refused the submission run for good: the row no longer says `submit: true`, its
    `properties.submission` says FAILED and why (the stable message); asking again starts a new submission."""
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body("refused", submit=True))
        engine.succeed(row.test_system_id, report(2, 2))
        await state.reconciler.tick()
        first = await _submission_leg(state, row.id)
        engine.reject = "'submission' is a required property"
        await state.reconciler.tick()  # the relay sends it; the engine refuses it for good
        async with state.sessions() as session:
            stored = await session.get(Result, row.id)
            refused = await session.get(Leg, first.id)
        assert refused is not None and refused.finished and refused.outcome == "rejected"
        assert stored is not None and stored.submit is False and stored.status == 0
        shown = (stored.properties or {})["submission"]
        assert (shown["status"], shown["task_id"], shown["outcome"]) == ("FAILED", first.id, "rejected")
        assert isinstance(shown["error"], str) and "required property" not in shown["error"]  # no engine text
        engine.reject = None
        again, new = await submit_test(state, ADMIN, body("refused", submit=True))
        assert (again.id, new, again.submit) == (row.id, False, True)
        async with state.sessions() as session:
            stmt = select(Leg).where(Leg.result_id == row.id, Leg.role == LegRole.SUBMISSION)
            assert len(list((await session.execute(stmt)).scalars())) == 2
        await state.reconciler.tick()
        async with state.sessions() as session:
            done = await session.get(Result, row.id)
        assert done is not None and done.submit is True

    memory_gateway.run(test)
