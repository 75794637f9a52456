"""Issue 11, point 7: a student's repository must be a provider's, and an outage's details are for admins only."""

from __future__ import annotations

import pytest

from gateway.jobs.credential_binding import check_student_provider
from gateway.jobs.errors import BadJobRequest
from gateway.jobs.results import system_status
from gateway.jobs.submit import submit_test
from gateway.jobs.submit_rules import check_student_repository
from gateway.runtime import GatewayState
from gateway.schemas import TestCreate
from gateway.store.accounts import Principal
from tests.fast.conftest import ADMIN, MemoryGateway, body

pytestmark = pytest.mark.fast

ALICE = Principal("u-alice", "alice", "student", frozenset({"m-alice"}))


@pytest.mark.parametrize(
    ("provider_url", "project", "allowed", "refused"),
    [
        ("https://gitlab.example.org", "group/name", [], False),
        ("ssh://git@gitlab.example.org", "group/name", ["gitlab.example.org"], False),
        ("file:///", "etc", [], True),  # a path on the worker
        ("/srv/repos", "x", [], True),
        ("https://gitlab.example.org", "/", [], True),
        ("https://gitlab.example.org", "../../etc", [], True),
        ("http://gitlab.example.org", "group/name", [], True),  # plain http
    ],
)
def test_student_repositories_are_restricted_to_providers(
    provider_url: str, project: str, allowed: list[str], refused: bool
) -> None:
    given = TestCreate(directory="week1/ex1", version_identifier="c", provider_url=provider_url, project=project)
    if refused:
        with pytest.raises(BadJobRequest):
            check_student_repository(given, allowed)
    else:
        check_student_repository(given, allowed)


@pytest.mark.parametrize(
    ("provider_url", "providers", "registered", "refused"),
    [
        ("https://gitlab.example.org", [], "https://gitlab.example.org/me/repo.git", False),  # their own host
        ("https://gitlab.example.org", ["gitlab.example.org"], None, False),
        ("ssh://git@gitlab.example.org", ["gitlab.example.org"], None, False),
        ("https://evil.example.com", ["gitlab.example.org"], "https://gitlab.example.org/me/r.git", True),
        ("https://evil.example.com", [], None, True),  # an empty list no longer means any host
        ("http://gitlab.example.org", ["gitlab.example.org"], None, True),
    ],
)
def test_student_providers_are_the_configured_ones_and_their_own(
    provider_url: str, providers: list[str], registered: str | None, refused: bool
) -> None:
    if refused:
        with pytest.raises(BadJobRequest):
            check_student_provider(provider_url, providers, registered)
    else:
        check_student_provider(provider_url, providers, registered)


def test_students_see_a_neutral_message_while_the_engine_is_down(memory_gateway: MemoryGateway) -> None:
    engine = memory_gateway.engine
    engine.down = True

    async def test(state: GatewayState) -> None:
        row, _ = await submit_test(state, ADMIN, body("down1"))
        assert row.test_system_id is not None
        as_admin = await system_status(state, ADMIN, row.test_system_id)
        as_student = await system_status(state, ALICE, row.test_system_id)
        assert "celery is down" in as_admin["message"]
        assert as_student == {"status": "SCHEDULED", "message": "waiting for the engine to accept the job"}

    memory_gateway.run(test)
