"""Issue 12 on the real engines: what the platform's own worker, CLI and clients need, and a mixed fleet.

The legacy side is played from the contract: a client that tests a commit then submits it, a Prefect flow the
gateway did not write that writes back through the bare URL (no `/api`, as behind the platform's proxy), the
CLI's `login` and `worker test-job` calls, the Celery-era front end's task views, a client parsing rows with the
legacy models' types, and an old Celery worker (pickle results, the legacy result shape) on the gateway's queue.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from legacy_stack import (
    ADMIN,
    ALICE,
    BOB,
    CAROL,
    DAVE,
    DAVE_CREDENTIAL,
    DAVE_TOKEN,
    DIRS,
    SLOW,
    WORKER,
    Stack,
    flow_runs_by_leg,
    wait_until,
)
from pydantic import BaseModel, ConfigDict

from tests.support.celery_worker import WorkerProcess, base_env, stop_worker, wait_until_ready
from tests.support.contract_keys import TASK_INFO_KEYS

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

FINAL = {0, 1, 2, 6}


class LegacyResultList(BaseModel):
    """How the platform's client types a listed row: these strings are required (null fails to parse)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    submit: bool
    course_member_id: str
    course_content_id: str
    course_content_type_id: str
    course_submission_group_id: str | None
    execution_backend_id: str
    test_system_id: str
    result: float
    properties: dict[str, Any] | None
    version_identifier: str
    status: int
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    updated_by: str | None


class LegacyResultGet(LegacyResultList):
    result_json: dict[str, Any] | None


def submit(client: httpx.Client, key: str, commit: str, **extra: Any) -> dict[str, Any]:
    answer = client.post("/api/tests", json={"directory": DIRS[key], "version_identifier": commit, **extra})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def final_status(client: httpx.Client, result_id: str, timeout: float = 150) -> int:
    def final() -> tuple[int] | None:
        value = client.get(f"/api/results/{result_id}/status").json()
        return (value,) if value in FINAL else None

    return wait_until(final, f"status of {result_id}", timeout)[0]


def task_finished(admin: httpx.Client, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        info = admin.get(f"/api/tasks/{task_id}").json()
        return info if info["status"] in {"finished", "failed", "cancelled"} else None

    return wait_until(done, f"task {task_id}", timeout=150)


@pytest.fixture(scope="module")
def stack(both_engines: Stack) -> Stack:
    return both_engines


# -------------------------------------------------------------------------------------------- submission
def test_test_then_submit_the_same_commit_starts_submission_once(stack: Stack) -> None:
    """12.1: the platform's "test, then submit": the second request answers a submission run id, once."""
    commit = stack.repos.commit("passing")
    with stack.client(ALICE) as alice, stack.client(ADMIN) as admin:
        tested = submit(alice, "celery", commit)
        assert final_status(alice, tested["id"]) == 0
        first = submit(alice, "celery", commit, submit=True)
        second = submit(alice, "celery", commit, submit=True)
        assert first["id"] == second["id"] == tested["id"] and first["submit"] is True
        sub_id = first["submission_flow_run_id"]
        assert isinstance(sub_id, str) and second["submission_flow_run_id"] == sub_id
        info = task_finished(admin, sub_id)
        assert info["status"] == "finished" and info["task_name"] == "ctutor_backend.tasks.submission_processing"
        recorded = admin.get(f"/api/tasks/{sub_id}/result").json()["result"]
    assert recorded["commit"] == commit and recorded["result_id"] == tested["id"]


def test_a_run_closed_by_a_legacy_write_back_through_the_bare_url_is_submitted(stack: Stack) -> None:
    """12.2 + 12.5 + 12.10: a flow the gateway did not write PATCHes `/results/{id}` (no `/api`); the run ends
    COMPLETED, `submit=true` starts submission like a reconciler-closed run, and its flow run id resolves."""
    with stack.client(CAROL) as carol, stack.client(ADMIN) as admin:
        run = submit(carol, "writeback", stack.repos.commit("passing"), submit=True)
        assert final_status(carol, run["id"]) == 0  # no 404 for the worker's bare URL: not FAILED
        again = submit(carol, "writeback", stack.repos.commit("passing"), submit=True)
        sub_id = again["submission_flow_run_id"]
        assert isinstance(sub_id, str) and again["id"] == run["id"]
        assert task_finished(admin, sub_id)["status"] == "finished"
        flow_run = flow_runs_by_leg(stack.prefect_api or "", [run["test_system_id"]])[run["test_system_id"]][0]
        # The legacy client knows only the flow run id: the status route resolves it (student and admin).
        for client in (carol, admin):
            by_engine = client.get(f"/api/system/status/{flow_run['id']}")
            assert by_engine.status_code == 200 and by_engine.json()["status"] == "COMPLETED"
            at_root = client.get(f"/system/status/{flow_run['id']}")
            assert at_root.status_code == 200 and at_root.json() == by_engine.json()


def test_a_custom_submission_deployment_receives_the_legacy_parameter_set(stack: Stack) -> None:
    """12.4: `properties.submission_deployment` names a deployment with the platform's `submit-result` signature
    (every parameter required); it gets exactly that set, `token` is the credential's name, and the secret that
    was (wrongly) inside the member's repository URL appears nowhere: not in Prefect, not in what the gateway shows."""
    commit = stack.repos.commit("passing")
    ref_url, ref_commit = stack.repos.reference
    with stack.client(DAVE) as dave, stack.client(ADMIN) as admin:
        run = submit(dave, "legacy-submit", commit, submit=True)
        assert final_status(dave, run["id"]) == 0  # closed by the write-back flow
        sub_id = submit(dave, "legacy-submit", commit, submit=True)["submission_flow_run_id"]
        assert isinstance(sub_id, str)
        info = task_finished(admin, sub_id)
        assert info["status"] == "finished", info
        received = admin.get(f"/api/tasks/{sub_id}/result").json()["result"]
        shown = [info, received, admin.get(f"/api/results/{run['id']}").json(), admin.get("/api/tasks").json()]
    runs = flow_runs_by_leg(stack.prefect_api or "", [sub_id, run["test_system_id"]])
    (flow_run,) = runs[sub_id]
    assert flow_run["parameters"] == received  # the flow recorded exactly what Prefect handed it
    assert set(received) == {"submission", "provider", "full_path", "token", "assignment", "module", "user_id"}
    assert received["provider"] == "https://git.example.invalid" and received["full_path"] == "course/dave"
    assert received["token"] == DAVE_CREDENTIAL and received["user_id"] == "u-dave"
    submission = received["submission"]
    assert submission["id"] == submission["result_id"] == run["id"] and submission["status"] == 0
    assert submission["test_system_id"] == run["test_system_id"] and submission["version_identifier"] == commit
    module, assignment = received["module"], received["assignment"]
    assert module["url"] == "https://git.example.invalid/course/dave.git" and module["commit"] == commit
    assert module["path"] == DIRS["legacy-submit"] and module["token"] is None
    assert module["credential"] == DAVE_CREDENTIAL
    assert (assignment["url"], assignment["commit"], assignment["path"]) == (ref_url, ref_commit, DIRS["legacy-submit"])
    assert "user:u-dave" in flow_run["tags"]
    everything = repr([runs, shown])
    assert DAVE_TOKEN not in everything and "dave:" not in everything


def test_patch_submit_true_from_a_legacy_worker_is_applied(stack: Stack) -> None:
    """12.3: the worker's `{"submit": true}` after its merge request, on the bare URL too.

    The slow student's run stays open until released: a worker writes only runs open on an engine (23.6)."""
    with stack.client(SLOW) as slow, stack.client(WORKER) as worker:
        run = submit(slow, "celery", stack.repos.commit("slow"))
        try:
            for path in (f"/results/{run['id']}", f"/api/results/{run['id']}"):
                patched = worker.patch(path, json={"submit": True})
                assert patched.status_code == 200 and patched.json()["submit"] is True
            assert worker.patch(f"/results/{run['id']}", json={"submit": "yes"}).status_code == 422
            assert slow.get(f"/api/results/{run['id']}").json()["submit"] is True
        finally:
            stack.release_slow_runs()


# ------------------------------------------------------------------------------------------------ paths
def test_legacy_routes_at_the_root_and_gateway_routes_only_under_api(stack: Stack) -> None:
    """12.5: a client configured with the bare app URL works; the gateway's own routes stay under /api."""
    with stack.client(ADMIN) as admin:
        for path in ("/results", "/execution-backends", "/tasks/types", "/user", "/tests-celery/health"):
            assert admin.get(path).status_code == 200, path
        for path in ("/admin/course-contents", "/health"):
            assert admin.get(path).status_code == 404, path  # nothing the gateway adds shadows the root
        assert admin.get("/api/admin/course-contents").status_code == 200


# ------------------------------------------------------------------------------------------------ fields
def test_rows_parse_with_the_legacy_models_newest_first_and_large_limits(stack: Stack) -> None:
    """12.6 + 12.7: no null where the legacy models need a string; newest first; `latest`; limits capped."""
    with stack.client(SLOW) as slow, stack.client(ADMIN) as admin:
        made = [submit(slow, "celery", f"order-{i}-{uuid.uuid4().hex[:6]}") for i in range(3)]
        for run in made:
            assert admin.delete(f"/api/tasks/{run['test_system_id']}").status_code == 200  # (12.10) no CPU spent
        listed = slow.get("/api/results", params={"limit": 1_000_000})
        assert listed.status_code == 200  # a large limit is capped, not a 422
        rows = [LegacyResultList.model_validate(r) for r in listed.json()]
        stamps = [(r.created_at, r.id) for r in rows]
        assert stamps == sorted(stamps, reverse=True)
        first_two = slow.get("/api/results", params={"limit": 2}).json()
        assert [r["id"] for r in first_two] == [rows[0].id, rows[1].id]  # the newest, not the oldest
        assert rows[0].id == made[-1]["id"] and rows[0].course_content_type_id == "assignment"
        latest = slow.get("/api/results", params={"latest": True, "course_content_id": "cc-celery"}).json()
        assert [r["id"] for r in latest] == [made[-1]["id"]]
        one = LegacyResultGet.model_validate(slow.get(f"/api/results/{made[0]['id']}").json())
        assert one.course_content_type_id == "assignment"
        every = admin.get("/api/results", params={"limit": 100_000}).json()
    for row in every:
        LegacyResultList.model_validate(row)


def test_the_current_login_for_the_cli(stack: Stack) -> None:
    """12.8: `login -a basic` checks credentials with `GET /user`."""
    for path in ("/api/user", "/user"):
        with stack.client(ALICE) as alice:
            me = alice.get(path)
        assert me.status_code == 200 and me.json()["username"] == "alice" and isinstance(me.json()["id"], str)
        with stack.client(("alice", "wrong")) as wrong:
            assert wrong.get(path).status_code == 401


# ----------------------------------------------------------------------------------------------- tasks API
def test_a_task_without_its_parameters_is_refused_and_nothing_is_queued(stack: Stack) -> None:
    """12.9 / 11.5: the CLI's `worker test-job` with `parameters={}`: a clear 400, no task behind it."""
    with stack.client(ADMIN) as admin:
        before = admin.get("/api/tasks", params={"limit": 1}).json()["total"]
        for name in ("student_testing", "ctutor_backend.tasks.student_testing", "submission_processing"):
            refused = admin.post("/api/tasks/submit", json={"task_name": name, "parameters": {}})
            assert refused.status_code == 400 and "needs the parameter" in refused.json()["detail"]
        assert admin.get("/api/tasks", params={"limit": 1}).json()["total"] == before


def test_the_celery_era_task_views_over_both_engines(stack: Stack) -> None:
    """12.10: `GET /api/tasks?limit&offset`, `GET /api/tasks/{id}`, `DELETE /api/tasks/{id}`."""
    with stack.client(SLOW) as slow, stack.client(ADMIN) as admin:
        # The slow student's commit: it runs until released, so each DELETE certainly meets a job in flight.
        runs = [submit(slow, key, stack.repos.commit("slow")) for key in ("celery", "prefect")]
        page = admin.get("/api/tasks", params={"limit": 2, "offset": 0})
        assert page.status_code == 200 and set(page.json()) == {"tasks", "total", "limit", "offset"}
        assert page.headers["X-Total-Count"] == str(page.json()["total"])
        assert [t["task_id"] for t in page.json()["tasks"]] == [r["test_system_id"] for r in reversed(runs)]
        assert all(set(t) == TASK_INFO_KEYS for t in page.json()["tasks"])
        second = admin.get("/api/tasks", params={"limit": 1, "offset": 1}).json()["tasks"]
        assert [t["task_id"] for t in second] == [runs[0]["test_system_id"]]
        for run in runs:
            task = run["test_system_id"]
            info = admin.get(f"/api/tasks/{task}")
            assert info.status_code == 200 and set(info.json()) == TASK_INFO_KEYS
            deleted = admin.delete(f"/api/tasks/{task}")
            assert deleted.status_code == 200 and deleted.json()["status"] == "cancelled"
            assert slow.get(f"/api/results/{run['id']}/status").json() == 2
        assert admin.get(f"/api/tasks/{uuid.uuid4()}").status_code == 404


# ----------------------------------------------------------------------------------------------- mixed fleet
@pytest.fixture
def legacy_worker_only(stack: Stack) -> Iterator[Any]:
    """The stack's own workers stopped, an old worker started in their place; the gateway's back afterwards."""
    for worker in stack.workers:
        stop_worker(worker, graceful=False)  # gone before the test begins: how they stop is not what it tests
    started: list[WorkerProcess] = []

    def start(serializer: str) -> WorkerProcess:
        for old in started:
            stop_worker(old)
        name = f"legacy-{uuid.uuid4().hex[:6]}@localhost"
        env = base_env({**stack.env, "LEGACY_RESULT_SERIALIZER": serializer}, stack.data)
        log_path = stack.log_dir / f"{name.split('@')[0]}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "tests.support.legacy_celery_worker", "worker",
               "-Q", "high_priority", "-c", "1", "-P", "solo", f"--hostname={name}", "--loglevel=INFO"]  # fmt: skip
        with open(log_path, "wb") as log:
            process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        worker = WorkerProcess(process=process, hostname=name, log_path=log_path, env=env)
        started.append(worker)
        wait_until_ready(worker, 90)
        return worker

    try:
        yield start
    finally:
        for old in started:
            stop_worker(old, graceful=False)
        stack.start_worker()


def test_an_old_worker_on_the_gateway_queue_is_never_graded_from_what_the_gateway_cannot_read(
    stack: Stack, legacy_worker_only: Any
) -> None:
    """12.11: pickle is refused (FAILED, infrastructure, retryable); the legacy JSON shape is mapped."""
    commit = f"fleet-{uuid.uuid4().hex[:8]}"
    with stack.client(BOB) as bob:
        legacy_worker_only("pickle")
        pickled = submit(bob, "celery", commit)
        assert final_status(bob, pickled["id"]) == 1
        row = bob.get(f"/api/results/{pickled['id']}").json()
        assert row["result"] == 0.0 and row["result_json"]["celery_exception"] == "UndecodableResult"
        assert row["result_json"]["message"] == "The test run's result could not be read."
        assert "pickle" in row["result_json"]["details"]  # why, kept apart from the stable message
        legacy_worker_only("json")
        again = submit(bob, "celery", commit)  # FAILED allows a new run: the student is not stuck
        assert again["id"] != pickled["id"]
        assert final_status(bob, again["id"]) == 0
        graded = bob.get(f"/api/results/{again['id']}").json()
    assert graded["result"] == 0.75 and graded["result_json"]["summary"]["passed"] == 3
