"""Issue 11, point 7: error answers declared in the OpenAPI spec, strict legacy fields, OPTIONS answered."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from gateway.api.app import create_app
from gateway.api.auth import GuardedRoute
from gateway.api.deps import Admin
from gateway.schemas import CourseContentIn, ResultUpdate, Role
from gateway.store.accounts import Principal
from gateway.store.catalog import load_catalog
from tests.support.celery_worker import settings_from_env

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("model", "body"),
    [(ResultUpdate, {"status": False}), (ResultUpdate, {"status": "0"}), (CourseContentIn, {"max_submissions": False})],
)
def test_booleans_and_strings_are_not_numbers(model: type, body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate({"path": "a.b", **body})


def test_numbers_still_are() -> None:
    assert ResultUpdate.model_validate({"status": 0}).status == 0


def test_the_spec_declares_errors_and_options_is_answered(tmp_path: Path) -> None:
    app = create_app(settings_from_env({"GATEWAY_DATA_DIR": str(tmp_path)}))
    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()
        answers = spec["paths"]["/api/tests"]["post"]["responses"]
        assert {"400", "401", "403", "404", "409", "503"} <= set(answers)
        options = client.options("/api/tests")
        assert options.status_code == 204 and "POST" in options.headers["allow"]
        assert client.options("/api/no-such-route").status_code == 404


def _basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_login_then_validation_then_role(tmp_path: Path) -> None:
    """Issue 22: roles are dependencies, yet the order stays: no login 401, a bad body 422 (whoever sends it),
    then a wrong role 403; odd headers are the one 401."""
    settings = settings_from_env({"GATEWAY_DATA_DIR": str(tmp_path)})
    users = [
        {"username": "ada", "password": "pw-ada-1", "role": "admin"},
        {"username": "stu", "password": "pw-stu-1", "role": "student", "course_member_ids": []},
    ]
    load_catalog({"users": users}, settings)
    with TestClient(create_app(settings)) as client:
        student, admin = _basic("stu", "pw-stu-1"), _basic("ada", "pw-ada-1")
        bad_body = {"task_name": 5}
        assert client.post("/api/tasks/submit", json=bad_body).status_code == 401
        assert client.post("/api/tasks/submit", json=bad_body, headers=student).status_code == 422
        assert client.post("/api/tasks/submit", json={"task_name": "x"}, headers=student).status_code == 403
        assert client.get("/api/tasks", params={"limit": 0}, headers=student).status_code == 422
        assert client.get("/api/tasks", headers=student).status_code == 403
        assert client.patch("/api/results/r1", json={"status": 99}, headers=student).status_code == 422
        assert client.patch("/api/results/r1", json={"status": 0}, headers=student).status_code == 403
        assert client.get("/api/admin/users", headers=admin).status_code == 200
        unauthorized = client.get("/api/user").json()
        odd = [
            {"Authorization": "Basic"},
            {"Authorization": "Bearer abc"},
            {"Authorization": "Basic " + base64.b64encode(b"ada:pw-ada-1").decode() + "!"},
            {"Authorization": "Basic " + base64.b64encode(b":pw-ada-1").decode()},
            {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
            {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()},
        ]
        for headers in odd:
            answer = client.get("/api/user", headers=headers)
            assert (answer.status_code, answer.json()) == (401, unauthorized), headers
            assert answer.headers["WWW-Authenticate"] == "Basic"
        assert client.get("/api/user", headers=admin).json()["username"] == "ada"
        spec = client.get("/openapi.json").json()
        assert spec["components"]["securitySchemes"]["LegacyBasic"] == {"type": "http", "scheme": "basic"}


def test_a_refusal_is_never_lost_on_a_route_of_another_class() -> None:
    """The role dependency defers its 403 only on a `GuardedRoute`; anywhere else it raises at once (fail closed)."""

    class OneStudent:
        async def login(self, username: str, password: str) -> Principal:
            return Principal("u-stu", username, Role.STUDENT)

    app = FastAPI()
    app.state.gw = SimpleNamespace(auth=OneStudent())

    @app.post("/plain")
    async def plain(body: dict[str, int], principal: Admin) -> str:
        return "reached"

    guarded = APIRouter(route_class=GuardedRoute)

    @guarded.post("/guarded")
    async def guarded_route(body: dict[str, int], principal: Admin) -> str:
        return "reached"

    app.include_router(guarded)
    with TestClient(app) as client:
        login = _basic("stu", "any")
        assert client.post("/plain", json={"a": 1}, headers=login).status_code == 403
        assert client.post("/plain", json={"a": "x"}, headers=login).status_code == 403  # before validation
        assert client.post("/guarded", json={"a": 1}, headers=login).status_code == 403
        assert client.post("/guarded", json={"a": "x"}, headers=login).status_code == 422  # after validation
