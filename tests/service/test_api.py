"""The legacy API against a real uvicorn process, on the embedded SQLite store and on PostgreSQL.

No engine worker runs here: the Celery route's jobs wait in the broker, which is all these cases need (they
test the contract's shapes, rules, errors and auth, not execution; see test_e2e_celery.py for that).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.settings import Settings
from gateway.store.catalog import load_catalog
from gateway.store.migrate import upgrade
from tests.service.conftest import PASSWORD, demo_catalog, fresh_pg_database
from tests.service.server import GatewayServer, running_server
from tests.support.celery_worker import settings_from_env
from tests.support.contract_keys import GET_KEYS, LIST_KEYS, RUN_ANSWER_KEYS, TASK_INFO_KEYS

ADMIN = ("admin", PASSWORD)
WORKER = ("worker", PASSWORD)
ALICE = ("alice", PASSWORD)
BOB = ("bob", PASSWORD)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    data = tmp_path_factory.mktemp(f"gw-{request.param}")
    if request.param == "sqlite":
        env = {"GATEWAY_SERVE_AT_ROOT": "true"}
        settings = settings_from_env({"GATEWAY_DATA_DIR": str(data)})
        load_catalog(demo_catalog(), settings)  # the embedded default upgrades itself
        with running_server(env, data) as server:
            yield server
        return
    base = request.getfixturevalue("postgres_db")
    with fresh_pg_database(base) as db:
        env = {**db.env(), "GATEWAY_SERVE_AT_ROOT": "false"}  # the setting that turns the root off
        settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)})
        upgrade(settings)  # production: an operator upgrades; the API would refuse otherwise
        load_catalog(demo_catalog(), settings)
        with running_server(env, data) as server:
            yield server


def _commit(tag: str) -> str:
    import uuid

    return f"{tag}-{uuid.uuid4().hex[:10]}"


def _submit(api: GatewayServer, auth: tuple[str, str], **body: object) -> httpx.Response:
    with api.client(auth) as client:
        return client.post("/api/tests", json=body)


def test_submit_answers_the_contract_shapes(api: GatewayServer) -> None:
    commit = _commit("shape")
    resp = _submit(api, ALICE, directory="week1/ex1", version_identifier=commit)
    assert resp.status_code == 200, resp.text
    run = resp.json()
    assert set(run) == RUN_ANSWER_KEYS
    assert run["status"] == 3 and isinstance(run["status"], int)
    assert run["result"] == 0.0 and run["result_json"] is None
    assert run["course_member_id"] == "m-alice" and run["course_content_id"] == "cc-main"
    assert run["version_identifier"] == commit and run["test_system_id"]
    with api.client(ALICE) as client:
        got = client.get(f"/api/results/{run['id']}")
        assert got.status_code == 200 and set(got.json()) == GET_KEYS
        status = client.get(f"/api/results/{run['id']}/status")
        assert status.status_code == 200 and isinstance(status.json(), int)
        system = client.get(f"/api/system/status/{run['test_system_id']}")
        assert system.status_code == 200
        assert set(system.json()) <= {"status", "message"}
        assert system.json()["status"] == "SCHEDULED"  # no worker consumes this stack's queue
    # The same route by path and by id, and the Celery-era alias with the same body and answer.
    by_path = _submit(api, ALICE, course_content_path="week1.ex1", version_identifier=commit)
    assert by_path.json()["id"] == run["id"]
    with api.client(ALICE) as client:
        alias = client.post("/api/tests-celery", json={"course_content_id": "cc-main", "version_identifier": commit})
    assert alias.status_code == 200 and alias.json()["id"] == run["id"]


def test_error_texts(api: GatewayServer) -> None:
    assert _submit(api, ALICE, directory="week1/ex1").json() == {"detail": "commit is None"}
    assert _submit(api, ALICE, directory="week1/ex1").status_code == 400
    assert _submit(api, ALICE, directory="no/such", version_identifier="x").status_code == 404
    assert _submit(api, ALICE, directory="week1", version_identifier="x").status_code == 404  # not an assignment
    bad = _submit(api, ALICE, directory="week1/ex3", version_identifier=_commit("bad"))
    assert bad.status_code == 400 and bad.json() == {"detail": "execution_backend type not supported!"}
    first = _submit(api, BOB, directory="week1/ex2", version_identifier=_commit("max"), submit=True)
    assert first.status_code == 200
    second = _submit(api, BOB, directory="week1/ex2", version_identifier=_commit("max"), submit=True)
    assert second.status_code == 400
    assert second.json() == {"detail": "Reached max submissions for this course_content"}


def test_resubmission_rules(api: GatewayServer) -> None:
    commit = _commit("resub")
    first = _submit(api, ALICE, directory="week1/ex1", version_identifier=commit).json()
    again = _submit(api, ALICE, directory="week1/ex1", version_identifier=commit).json()
    assert again["id"] == first["id"]  # SCHEDULED: the same row, no new run
    with api.client(ADMIN) as admin:
        assert admin.patch(f"/api/results/{first['id']}", json={"status": 1}).status_code == 200
    rerun = _submit(api, ALICE, directory="week1/ex1", version_identifier=commit).json()
    assert rerun["id"] != first["id"] and rerun["test_system_id"] != first["test_system_id"]
    assert rerun["version_identifier"] == commit and rerun["status"] == 3
    with api.client(ALICE) as client:
        old = client.get(f"/api/results/{first['id']}").json()
    assert old["version_identifier"] == f"{commit}:1"
    with api.client(ADMIN) as admin:
        admin.patch(f"/api/results/{rerun['id']}", json={"status": 0, "result": 1.0, "result_json": {"ok": True}})
    done = _submit(api, ALICE, directory="week1/ex1", version_identifier=commit).json()
    assert done["id"] == rerun["id"] and done["status"] == 0  # COMPLETED: the same row


def test_results_list_and_write_back(api: GatewayServer) -> None:
    run = _submit(api, BOB, directory="week1/ex1", version_identifier=_commit("wb")).json()
    with api.client(WORKER) as worker:
        listed = worker.get("/api/results", params={"test_system_id": run["test_system_id"]})
        assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "1"
        (item,) = listed.json()
        assert set(item) == LIST_KEYS and item["id"] == run["id"]
        report = {"summary": {"total": 4, "passed": 3, "failed": 1, "skipped": 0}, "tests": []}
        patched = worker.patch(f"/api/results/{run['id']}", json={"status": 0, "result": 0.75, "result_json": report})
        assert patched.status_code == 200 and set(patched.json()) == GET_KEYS
    with api.client(BOB) as bob:
        row = bob.get(f"/api/results/{run['id']}").json()
        assert row["status"] == 0 and row["result"] == 0.75 and row["result_json"] == report
        assert bob.get(f"/api/results/{run['id']}/status").json() == 0
        assert bob.get(f"/api/system/status/{run['test_system_id']}").json() == {"status": "COMPLETED"}
    with api.client(ADMIN) as admin:
        leg = admin.get(f"/api/tasks/{run['test_system_id']}/status").json()
        assert set(leg) == TASK_INFO_KEYS and leg["status"] == "finished"
        paged = admin.get("/api/results", params={"limit": 1})
        assert len(paged.json()) == 1 and int(paged.headers["X-Total-Count"]) > 1


def test_the_worker_reaches_only_runs_open_on_an_engine(api: GatewayServer) -> None:
    """Issue 23.6: the worker account writes back the run it was given while it is open, and nothing else."""
    run = _submit(api, BOB, directory="week1/ex1", version_identifier=_commit("scope")).json()
    other = _submit(api, ALICE, directory="week1/ex1", version_identifier=_commit("scope")).json()
    report = {"summary": {"total": 4, "passed": 3, "failed": 1, "skipped": 0}, "tests": []}
    with api.client(WORKER) as worker:
        assert worker.get("/api/results").status_code == 403  # it looks up its run; it never browses
        assert worker.get("/api/results", params={"course_member_id": "m-alice"}).status_code == 403
        assert worker.patch("/api/results/does-not-exist", json={"status": 0}).status_code == 403
        assert worker.patch(f"/api/results/{run['id']}", json={"status": "done"}).status_code == 422  # body first
        # The platform's flow: RUNNING, the verdict, then the merge request's note.
        assert worker.patch(f"/api/results/{run['id']}", json={"status": 5}).status_code == 200
        verdict = {"status": 0, "result": 0.75, "result_json": report}
        assert worker.patch(f"/api/results/{run['id']}", json=verdict).status_code == 200
        assert worker.patch(f"/api/results/{run['id']}", json={"submit": True}).status_code == 200
        # Closed now: no other write, and the lookup finds nothing.
        assert worker.patch(f"/api/results/{run['id']}", json={"status": 0, "result": 1.0}).status_code == 403
        assert worker.patch(f"/api/results/{run['id']}", json={"properties": {"x": 1}}).status_code == 403
        listed = worker.get("/api/results", params={"test_system_id": run["test_system_id"]})
        assert listed.status_code == 200 and listed.json() == [] and listed.headers["X-Total-Count"] == "0"
        assert (
            worker.get("/api/results", params={"test_system_id": other["test_system_id"]}).json()[0]["id"]
            == (other["id"])
        )  # still open: found
    with api.client(ADMIN) as admin:
        assert admin.patch(f"/api/results/{other['id']}", json={"status": 1}).status_code == 200  # closed by another
    with api.client(WORKER) as worker:
        assert worker.patch(f"/api/results/{other['id']}", json={"status": 0, "result": 1.0}).status_code == 403
        assert worker.patch(f"/api/results/{other['id']}", json={"submit": True}).status_code == 403  # not its verdict
    with api.client(BOB) as bob, api.client(ALICE) as alice:
        row = bob.get(f"/api/results/{run['id']}").json()
        assert (row["status"], row["result"], row["submit"]) == (0, 0.75, True)
        theirs = alice.get(f"/api/results/{other['id']}").json()
        assert (theirs["status"], theirs["result"], theirs["submit"]) == (1, 0.0, False)


def test_auth_matrix(api: GatewayServer) -> None:
    alice_run = _submit(api, ALICE, directory="week1/ex1", version_identifier=_commit("auth")).json()
    rid = alice_run["id"]
    # 401: without credentials, unknown user, wrong password: one answer for all.
    answers = []
    for auth in (None, ("nobody", PASSWORD), ("alice", "wrong")):
        with api.client(auth) as client:
            resp = client.get(f"/api/results/{rid}")
        assert resp.status_code == 401
        answers.append(resp.json())
    assert answers[0] == answers[1] == answers[2]
    with httpx.Client(base_url=api.url) as anon:
        health = anon.get("/api/tests-celery/health")
        assert health.status_code == 200 and health.json()["backend"] == "celery"
    with api.client(BOB) as bob:
        assert bob.get(f"/api/results/{rid}").status_code == 404  # someone else's: existence does not leak
        assert bob.get(f"/api/results/{rid}/status").status_code == 404
        assert bob.get(f"/api/system/status/{alice_run['test_system_id']}").status_code == 404
        assert rid not in {r["id"] for r in bob.get("/api/results", params={"limit": 1000}).json()}
        assert bob.patch(f"/api/results/{rid}", json={"status": 0}).status_code == 403
        assert bob.get("/api/tasks/types").status_code == 403
        assert bob.get("/api/execution-backends").status_code == 403
        stolen = bob.post("/api/tests", json={"directory": "week1/ex1", "version_identifier": "x",
                                              "course_member_id": "m-alice"})  # fmt: skip
        assert stolen.status_code == 403
    with api.client(WORKER) as worker:
        assert worker.post("/api/tests", json={"directory": "week1/ex1", "version_identifier": "x"}).status_code == 403
        assert worker.get(f"/api/results/{rid}").status_code == 403
        assert worker.get("/api/admin/users").status_code == 403
    with api.client(ADMIN) as admin:
        assert admin.get(f"/api/results/{rid}").status_code == 200
        assert admin.get("/api/tasks/types").status_code == 200
        users = admin.get("/api/admin/users").json()
        assert {"admin", "alice"} <= {u["username"] for u in users}
        assert all("password_hash" not in u and "password" not in u for u in users)


def test_bad_bodies_and_ids_are_clear_4xx(api: GatewayServer) -> None:
    with api.client(ADMIN) as admin:
        assert (
            admin.post("/api/tests", content=b"{not json", headers={"content-type": "application/json"}).status_code
            == 422
        )
        assert admin.post("/api/tests", json={"submit": "maybe", "version_identifier": "x"}).status_code == 422
        assert admin.post("/api/tests", json=["a list"]).status_code == 422
        assert admin.get("/api/results/does-not-exist").status_code == 404
        assert admin.get("/api/results/does-not-exist/status").status_code == 404
        assert admin.get("/api/system/status/does-not-exist").status_code == 404
        assert admin.patch("/api/results/does-not-exist", json={"status": 0}).status_code == 404
        assert admin.get("/api/results", params={"status": "high"}).status_code == 422
        assert admin.get("/api/results", params={"limit": -3}).status_code == 422
        assert admin.get("/api/tasks/nope/status").status_code == 404
        assert admin.post("/api/tasks/submit", json={"task_name": "rm -rf"}).status_code == 400
        assert admin.post("/api/tasks/submit", json={}).status_code == 422
        token = {"task_name": "student_testing", "parameters": {"test_job": {"module": {"url": "x", "token": "t"}}}}
        assert admin.post("/api/tasks/submit", json=token).status_code == 400
        assert admin.post("/api/execution-backends", json={"type": "celery", "slug": "bad slug"}).status_code == 422
        # An admin submit without a member is refused clearly.
        assert admin.post("/api/tests", json={"directory": "week1/ex1", "version_identifier": "x"}).status_code == 400
    with api.client(ALICE) as alice:
        run = _submit(api, ALICE, directory="week1/ex1", version_identifier=_commit("bad")).json()
        # A student may not write back (403); a body out of range is refused before the route runs (422).
        assert alice.patch(f"/api/results/{run['id']}", json={"status": 0}).status_code == 403
        assert alice.patch(f"/api/results/{run['id']}", json={"status": 99}).status_code == 422


def test_tasks_family(api: GatewayServer) -> None:
    with api.client(ADMIN) as admin:
        types = admin.get("/api/tasks/types").json()
        assert types == ["student_testing", "submission_processing"]  # the platform registry's short names
        workers = admin.get("/api/tasks/workers/status")  # reachable: declared before /{task_id}/status
        assert workers.status_code == 200 and {"engines", "workers", "queues"} <= set(workers.json())
        assert "password" not in workers.text and "://" not in workers.text
        sub = admin.post(
            "/api/tasks/submit",
            json={"task_name": "submission_processing", "parameters": {"submission": {"x": 1}}, "delay": 3600},
        )
        assert sub.status_code == 400 and "submission.test_job" in sub.json()["detail"]  # validated up front
        job = {"module": {"url": "https://git.example.invalid/s/r.git", "commit": "abc", "path": "week1/ex1"}}
        sub = admin.post(
            "/api/tasks/submit",
            json={"task_name": "submission_processing", "parameters": {"submission": {"test_job": job}}, "delay": 3600},
        )
        assert sub.status_code == 200 and sub.json()["status"] == "submitted"
        task_id = sub.json()["task_id"]
        info = admin.get(f"/api/tasks/{task_id}/status").json()
        assert set(info) == TASK_INFO_KEYS and info["status"] == "deferred"
        result = admin.get(f"/api/tasks/{task_id}/result").json()
        assert result["task_id"] == task_id and result["result"] is None
        cancelled = admin.delete(f"/api/tasks/{task_id}/cancel")
        assert cancelled.json() == {"task_id": task_id, "status": "cancelled", "message": "Task cancelled"}
        assert admin.get(f"/api/tasks/{task_id}/status").json()["status"] == "cancelled"


def test_execution_backends_crud(api: GatewayServer) -> None:
    with api.client(ADMIN) as admin:
        props = {"deployment": "test-assignment/system"}
        created = admin.post(
            "/api/execution-backends", json={"type": "prefect", "slug": "pf-crud", "properties": props}
        )
        assert created.status_code == 200
        body = created.json()
        assert set(body) == {"id", "type", "slug", "properties", "created_at", "updated_at"}
        assert admin.post("/api/execution-backends", json={"type": "celery", "slug": "pf-crud"}).status_code == 409
        bid = body["id"]
        assert admin.get(f"/api/execution-backends/{bid}").json()["slug"] == "pf-crud"
        patched = admin.patch(f"/api/execution-backends/{bid}", json={"type": "prefect_builtin"})
        assert patched.json()["type"] == "prefect_builtin"
        listed = admin.get("/api/execution-backends")
        assert int(listed.headers["X-Total-Count"]) >= 3
        assert admin.delete(f"/api/execution-backends/{bid}").status_code == 200
        assert admin.get(f"/api/execution-backends/{bid}").status_code == 404


def test_served_at_root_by_setting(api: GatewayServer) -> None:
    with httpx.Client(base_url=api.url) as anon:
        at_root = anon.get("/tests-celery/health")
    expected = 200 if api.env.get("GATEWAY_SERVE_AT_ROOT") == "true" else 404
    assert at_root.status_code == expected


def test_postgres_api_refuses_an_out_of_date_schema(postgres_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from tests.service.server import free_port
    from tests.support.celery_worker import GATEWAY_BIN, base_env

    with fresh_pg_database(postgres_db) as db:
        env = base_env(db.env(), tmp_path)
        done = subprocess.run(
            [str(GATEWAY_BIN), "serve", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2
    assert "gateway db upgrade" in done.stderr and done.stderr.strip().count("\n") == 0


def test_settings_give_async_urls() -> None:
    pg = Settings(postgres_host="db", postgres_db="x", gateway_data_dir=Path("/tmp/unused"))
    assert pg.async_database_url().startswith("postgresql+asyncpg://")
    lite = Settings(gateway_data_dir=Path("/tmp/unused-gw"))
    assert lite.async_database_url().startswith("sqlite+aiosqlite:///")


def test_openapi_schema_is_served(api: GatewayServer) -> None:
    # The admin CRUD routes are built by a factory; their body models must resolve for the schema to render.
    with httpx.Client(base_url=api.url) as anon:
        schema = anon.get("/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/tests" in paths and "/api/admin/course-contents" in paths
    body = paths["/api/admin/course-contents"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].startswith("#/components/schemas/")
