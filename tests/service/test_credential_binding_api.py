"""Credentials stay with their host, through the API (issue 23, part 5): a real uvicorn, a real store.

A student may name in `provider_url` only an https/ssh host that is a configured provider or their own
repository's host (else a clear 400); `http` is refused; and the job a run stores and sends carries the member's
credential only for the host the credential was registered with. What the worker then does with such a job
against a listening server is shown in tests/work/test_credential_binding.py.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store.catalog import load_catalog
from tests.service.conftest import PASSWORD, demo_catalog
from tests.service.server import GatewayServer, running_server
from tests.support.celery_worker import settings_from_env

CAROL = ("carol", PASSWORD)
ADMIN = ("admin", PASSWORD)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayServer, Path]]:
    data = tmp_path_factory.mktemp("gw-credentials")
    catalog = demo_catalog()
    catalog["course_members"].append(
        {"id": "m-carol", "user_id": "u-carol", "repository_url": "https://git.course.test/carol/repo.git",
         "credential": "carol-git"}
    )  # fmt: skip
    catalog["users"].append({"username": "carol", "password": PASSWORD, "role": "student",
                             "course_member_ids": ["m-carol"]})  # fmt: skip
    env = {"GATEWAY_SERVE_AT_ROOT": "true", "GATEWAY_STUDENT_PROVIDERS": '["mirror.course.test"]'}
    load_catalog(catalog, settings_from_env({"GATEWAY_DATA_DIR": str(data)}))
    with running_server(env, data) as server:
        yield server, data


def _submit(server: GatewayServer, **body: Any) -> Any:
    with server.client(CAROL) as client:
        return client.post("/api/tests", json={"directory": "week1/ex1", "version_identifier": uuid.uuid4().hex,
                                               **({"project": "carol/repo"} if body else {}), **body})  # fmt: skip


def _module(data: Path, leg_id: str) -> dict[str, Any]:
    with sqlite3.connect(data / "gateway.sqlite") as db:
        (spec,) = db.execute("SELECT spec FROM leg WHERE id = ?", (leg_id,)).fetchone()
    return json.loads(spec)["params"]["test_job"]["module"]


@pytest.mark.parametrize(
    "provider_url",
    ["https://evil.example.com", "http://git.course.test", "http://mirror.course.test", "file:///srv", "ssh://x.test"],
)
def test_a_student_cannot_point_at_a_host_that_is_not_allowed(api: tuple[GatewayServer, Path], provider_url: str):
    answer = _submit(api[0], provider_url=provider_url)
    assert answer.status_code == 400, answer.text
    assert "provider" in answer.json()["detail"]


def test_the_credential_goes_with_its_own_host_only(api: tuple[GatewayServer, Path]) -> None:
    server, data = api
    own = _submit(server, provider_url="https://git.course.test")
    mirror = _submit(server, provider_url="https://mirror.course.test")  # allowed, but not the credential's
    plain = _submit(server)  # the registered repository
    for answer in (own, mirror, plain):
        assert answer.status_code in (200, 201), answer.text
    modules = {name: _module(data, a.json()["test_system_id"]) for name, a in
               (("own", own), ("mirror", mirror), ("plain", plain))}  # fmt: skip
    assert modules["own"]["url"] == "https://git.course.test/carol/repo.git"
    assert modules["own"]["credential"] == "carol-git" and modules["own"]["credential_hosts"] == ["git.course.test"]
    assert modules["plain"]["credential"] == "carol-git"
    assert modules["mirror"]["url"].startswith("https://mirror.course.test/")
    assert modules["mirror"]["credential"] is None and not modules["mirror"]["credential_hosts"]
