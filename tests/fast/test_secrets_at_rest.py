"""Secrets never rest in what the gateway stores or sends: URLs lose their credentials, secret keys are refused.

Table-driven on the helpers, then through the submit paths against the in-memory engine (what lands in the leg's
spec is exactly what an engine receives). The worker-side scrub (celery_taskmeta) is tested with a real producer
in tests/faults/test_celery_faults.py.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from common.redact import find_secret_key, scrub, strip_credentials
from gateway.jobs.errors import BadJobRequest
from gateway.jobs.submit import submit_test
from gateway.jobs.tasks import submit_task
from gateway.runtime import GatewayState
from gateway.schemas import CourseMemberGet, TestCreate
from gateway.store.catalog import load_catalog
from gateway.store.models import CourseMember, Leg
from tests.fast.conftest import ADMIN, MemoryGateway, catalog

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://user:s3cret@git.example.org/a/b.git", "https://git.example.org/a/b.git"),
        ("https://glpat-tok3n@git.example.org/a/b.git", "https://git.example.org/a/b.git"),  # token as user name
        ("http://oauth2:tok@host:8080/x", "http://host:8080/x"),
        ("ssh://git:pw@host/x.git", "ssh://git@host/x.git"),  # the account stays, the password goes
        ("ssh://git@host/x.git", "ssh://git@host/x.git"),
        ("https://git.example.org/a/b.git", "https://git.example.org/a/b.git"),
        ("file:///srv/repos/x", "file:///srv/repos/x"),
    ],
)
def test_urls_lose_their_credentials(url: str, stored: str) -> None:
    assert strip_credentials(url) == stored


@pytest.mark.parametrize(
    ("parameters", "found"),
    [
        ({"token": "x"}, "token"),
        ({"test_job": {"module": {"Token": "x"}}}, "test_job.module.Token"),
        ({"a": [{"access_token": "x"}]}, "a[0].access_token"),
        ({"password": "x"}, "password"),
        ({"client_secret": "x"}, "client_secret"),
        ({"API_KEY": "x"}, "API_KEY"),
        ({"token": None, "password": ""}, None),  # the legacy shape carries empty ones: nothing secret in them
        ({"credential": "gitlab-ci", "token_name": "x"}, None),  # a secret's *name* is not a secret
    ],
)
def test_secret_looking_keys_are_found(parameters: dict[str, object], found: str | None) -> None:
    assert find_secret_key(parameters) == found


def test_scrub_masks_secret_keys_and_strips_urls_everywhere() -> None:
    kwargs = {"test_job": {"module": {"url": "https://u:pw@h/x.git", "token": "glpat-1"}}, "Token": "glpat-2"}
    cleaned = json.dumps(scrub(kwargs))
    assert "glpat" not in cleaned and "pw" not in cleaned and "https://h/x.git" in cleaned


def test_submits_store_and_send_no_credentials(memory_gateway: MemoryGateway) -> None:
    data = catalog()
    data["course_members"][0]["repository_url"] = "https://alice:hunter2@git.example.org/alice/repo.git"
    load_catalog(data, memory_gateway.settings)
    engine = memory_gateway.engine

    async def test(state: GatewayState) -> None:
        async with state.sessions() as session:
            member = (await session.execute(select(CourseMember).where(CourseMember.id == "m-alice"))).scalar_one()
        assert member.repository_url == "https://git.example.org/alice/repo.git"  # stored stripped
        assert "hunter2" not in str(CourseMemberGet.model_validate(member).model_dump())
        own = TestCreate(directory="week1/ex1", course_member_id="m-alice", version_identifier="s1")
        given = TestCreate(
            directory="week1/ex1",
            course_member_id="m-alice",
            version_identifier="s2",
            provider_url="https://bob:pa55@git.example.org",
            project="bob/repo",
        )
        for body in (own, given):
            row, _ = await submit_test(state, ADMIN, body)
            async with state.sessions() as session:
                leg = await session.get(Leg, row.test_system_id)
            assert leg is not None
            stored, sent = json.dumps(leg.spec), json.dumps(engine.runs[leg.id].job.params)
            for text in (stored, sent):
                assert "hunter2" not in text and "pa55" not in text and "git.example.org" in text
        for secret in ({"Token": "x"}, {"access_token": "x"}, {"test_job": {"module": {"password": "x"}}}):
            with pytest.raises(BadJobRequest, match="secret"):
                await submit_task(state, "ctutor_backend.tasks.student_testing", {"test_job": {}, **secret}, None, 0)
        job = {"test_job": {"module": {"url": "https://u:pw@h/x.git", "commit": "c1", "path": "p"}}}
        leg_id = await submit_task(state, "ctutor_backend.tasks.student_testing", job, None, 0)
        async with state.sessions() as session:
            leg = await session.get(Leg, leg_id)
        assert leg is not None and leg.spec["params"]["test_job"]["module"]["url"] == "https://h/x.git"

    memory_gateway.run(test)
