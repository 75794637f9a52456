"""A legacy client against the running API, on both engines: the contract's shapes, rules, errors and flows.

One stack for the module (API on PostgreSQL, Celery worker on Redis + PostgreSQL, Prefect server + runner).
Each backend kind of the contract has its own assignment directory, so a client submits by `directory`
everywhere: `celery`, `prefect`, `prefect_builtin` (legacy alias), a Prefect deployment the gateway did not
write (it writes back through PATCH), a missing deployment, and an unsupported type.
"""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import httpx
import pytest
from legacy_stack import (
    ADMIN,
    ALICE,
    BOB,
    CAROL,
    DIRS,
    FINAL,
    FINAL_NAMES,
    SLOW,
    WORKER,
    Stack,
    flow_runs_by_leg,
    wait_until,
)

from tests.support.contract_keys import (
    BACKEND_KEYS,
    GET_KEYS,
    LIST_KEYS,
    PROGRESS_KEYS,
    RUN_ANSWER_KEYS,
    TASK_INFO_KEYS,
    TASK_RESULT_KEYS,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

ENGINES = ["celery", "prefect", "legacy"]  # `legacy` = a backend of type `prefect_builtin`
ENGINE_OF = {"celery": "celery", "prefect": "prefect", "legacy": "prefect"}


def submit(
    client: httpx.Client, key: str, commit: str | None, path: str = "/api/tests", **extra: Any
) -> httpx.Response:
    body: dict[str, Any] = {"directory": DIRS[key], **extra}
    if commit is not None:
        body["version_identifier"] = commit
    return client.post(path, json=body)


def poll_system_status(client: httpx.Client, test_system_id: str, timeout: float = 150) -> str:
    """Contract step 2, first path: the run's status name until a final one."""

    def final() -> str | None:
        answer = client.get(f"/api/system/status/{test_system_id}")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) <= {"status", "message"} and isinstance(body["status"], str)
        return body["status"] if body["status"] in FINAL_NAMES else None

    return wait_until(final, f"system status of {test_system_id}", timeout)


def poll_result_status(client: httpx.Client, result_id: str, timeout: float = 150, stack: Stack | None = None) -> int:
    """Contract step 2, second path: the bare JSON integer until a final one (slow runs released with `stack`)."""

    def final() -> tuple[int] | None:
        if stack is not None:
            stack.release_slow_runs()
        answer = client.get(f"/api/results/{result_id}/status")
        assert answer.status_code == 200, answer.text
        value = answer.json()
        assert type(value) is int, value  # a bare integer, not an object or a string
        return (value,) if value in FINAL else None

    return wait_until(final, f"status of result {result_id}", timeout)[0]


def assert_run_shape(run: dict[str, Any]) -> None:
    assert set(run) == RUN_ANSWER_KEYS
    assert type(run["status"]) is int and type(run["result"]) is float
    assert isinstance(run["id"], str) and isinstance(run["test_system_id"], str)
    assert run["result_json"] is None or isinstance(run["result_json"], dict)
    assert run["submission_flow_run_id"] is None or isinstance(run["submission_flow_run_id"], str)


def assert_get_shape(row: dict[str, Any]) -> None:
    assert set(row) == GET_KEYS
    assert type(row["status"]) is int and type(row["result"]) is float
    assert isinstance(row["created_at"], str) and isinstance(row["updated_at"], str)


# ------------------------------------------------------------------------------------------------- submitting
@pytest.mark.parametrize("key", ENGINES)
def test_submit_answers_a_scheduled_run_with_the_exact_keys(both_engines: Stack, key: str) -> None:
    with both_engines.client(SLOW) as slow, both_engines.client(ADMIN) as admin:
        for path in ("/api/tests", "/api/tests-celery"):
            resp = submit(slow, key, f"shape-{uuid.uuid4().hex[:8]}", path=path)
            assert resp.status_code == 200, resp.text  # 200, not 201
            run = resp.json()
            assert_run_shape(run)
            assert run["status"] == 3 and run["result"] == 0.0 and run["result_json"] is None
            assert run["submission_flow_run_id"] is None and run["course_content_id"] == f"cc-{key}"
            # Not needed any further: cancelled, so the engines do not spend the shared CPU on it.
            assert admin.delete(f"/api/tasks/{run['test_system_id']}/cancel").status_code == 200


@pytest.mark.parametrize("key", ENGINES)
def test_legacy_client_polls_to_completion_through_both_status_paths(both_engines: Stack, key: str) -> None:
    repos = both_engines.repos
    with both_engines.client(ALICE) as alice, both_engines.client(BOB) as bob:
        ok = submit(alice, key, repos.commit("passing"))
        bad = submit(bob, key, repos.commit("failing"))
        assert ok.status_code == 200 and bad.status_code == 200, (ok.text, bad.text)
        ok_run, bad_run = ok.json(), bad.json()
        assert poll_system_status(alice, ok_run["test_system_id"]) == "COMPLETED"
        assert poll_result_status(bob, bad_run["id"]) == 0  # the run completed; the student's test failed
        good = alice.get(f"/api/results/{ok_run['id']}").json()
        failing = bob.get(f"/api/results/{bad_run['id']}").json()
        # Step 3: the row, its score and its report tree.
        for row in (good, failing):
            assert_get_shape(row)
            assert row["status"] == 0 and row["execution_backend_id"] == ok_run["execution_backend_id"]
        assert good["result"] == 1.0 and good["result_json"]["summary"]["passed"] == 3
        summary = failing["result_json"]["summary"]
        assert summary == {"total": 3, "passed": 2, "failed": 1, "skipped": 0}
        assert failing["result"] == pytest.approx(2 / 3)
        assert {"name", "type", "status", "result", "summary", "tests"} <= set(good["result_json"])
        # A completed commit submitted again: the same row, no new run.
        again = submit(alice, key, repos.commit("passing")).json()
        assert again["id"] == ok_run["id"] and again["test_system_id"] == ok_run["test_system_id"]
    with both_engines.client(ADMIN) as admin:
        listed = admin.get("/api/results", params={"test_system_id": ok_run["test_system_id"]})
        assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "1"
        assert [set(r) for r in listed.json()] == [LIST_KEYS]
        # The same run as a task (the Celery era's views work for a run of either engine).
        info = admin.get(f"/api/tasks/{ok_run['test_system_id']}/status").json()
        result = admin.get(f"/api/tasks/{ok_run['test_system_id']}/result").json()
    assert set(info) == TASK_INFO_KEYS and info["status"] == "finished"
    assert set(result) == TASK_RESULT_KEYS and result["result"]["summary"] == good["result_json"]["summary"]
    if ENGINE_OF[key] == "prefect":  # one flow run, not two, for the two reads and the resubmission
        assert (
            len(flow_runs_by_leg(both_engines.prefect_api or "", [ok_run["test_system_id"]])[ok_run["test_system_id"]])
            == 1
        )


@pytest.mark.parametrize("key", ["celery", "prefect"])
def test_a_broken_run_is_failed_with_the_legacy_error_shape_and_a_resubmission_renames_it(
    both_engines: Stack, key: str
) -> None:
    missing_commit = uuid.uuid4().hex + "abcdefgh"  # 40 hex digits no repository has
    with both_engines.client(CAROL) as carol:
        first = submit(carol, key, missing_commit).json()
        assert poll_result_status(carol, first["id"]) == 1
        row = carol.get(f"/api/results/{first['id']}").json()
        assert row["result"] == 0.0
        assert set(row["result_json"]) == {f"{ENGINE_OF[key]}_exception", "message", "details"}
        assert row["result_json"]["message"] == "Commit not found in the student repository."
        assert missing_commit in row["result_json"]["details"]
        # FAILED is one of the statuses that allow a new run: the old row is renamed `<commit>:<status>`.
        second = submit(carol, key, missing_commit).json()
        assert second["id"] != first["id"] and second["status"] == 3
        renamed = carol.get(f"/api/results/{first['id']}").json()
    assert renamed["version_identifier"] == f"{missing_commit}:1"


def test_a_cancelled_run_is_started_again_on_resubmission(both_engines: Stack) -> None:
    commit = both_engines.repos.commit("slow")
    with both_engines.client(SLOW) as slow, both_engines.client(ADMIN) as admin:
        first = submit(slow, "celery", commit, course_content_id="cc-capped").json()
        cancel = admin.delete(f"/api/tasks/{first['test_system_id']}/cancel")
        assert cancel.status_code == 200
        assert cancel.json() == {"task_id": first["test_system_id"], "status": "cancelled", "message": "Task cancelled"}
        assert slow.get(f"/api/results/{first['id']}/status").json() == 2
        second = submit(slow, "celery", commit, course_content_id="cc-capped")
        assert second.status_code == 200, second.text
        assert second.json()["id"] != first["id"]
        assert slow.get(f"/api/results/{first['id']}").json()["version_identifier"] == f"{commit}:2"
        assert admin.delete(f"/api/tasks/{second.json()['test_system_id']}/cancel").status_code == 200


# ------------------------------------------------------------------------------ one answer from either engine
def test_a_clone_failure_reads_the_same_on_both_engines(both_engines: Stack) -> None:
    """The contract's clone failure, word for word, on both engines; git's text apart under `details`."""
    # A provider that does not exist (a student may name providers only, never a path on the worker: issue 11).
    nowhere = "https://no-such-provider.invalid"
    failures, errors = {}, {}
    with both_engines.client(BOB) as bob, both_engines.client(ADMIN) as admin:
        for key in ("celery", "prefect"):
            run = submit(bob, key, "0" * 40, provider_url=nowhere, project="student/repo").json()
            assert poll_result_status(bob, run["id"]) == 1
            failures[key] = bob.get(f"/api/results/{run['id']}").json()["result_json"]
            errors[key] = admin.get(f"/api/tasks/{run['test_system_id']}/status").json()["error"]
    celery, prefect = failures["celery"], failures["prefect"]
    assert celery.pop("celery_exception") == prefect.pop("prefect_exception") == "InfrastructureError"
    assert celery == prefect  # but for the engine's name in the key, the same answer
    assert celery["message"] == "Git clone of student repository failed."
    assert celery["details"].startswith("Git clone of student repository failed: ")
    assert errors["celery"] == errors["prefect"] == celery["message"]


def test_a_prefect_run_is_found_by_its_test_system_id_and_every_route_takes_either_id(both_engines: Stack) -> None:
    """25.7: `test_system_id` is the Prefect flow run id (Prefect accepted the run before the answer), so a
    client reading Prefect with it finds the run; the flow run is named and tagged with the gateway's own id,
    and every route answers to that one too."""
    api = both_engines.prefect_api
    assert api is not None
    with both_engines.client(SLOW) as slow, both_engines.client(ADMIN) as admin:
        run = submit(slow, "legacy", both_engines.repos.commit("slow")).json()
        flow_run_id = run["test_system_id"]
        read = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=30)  # what the platform's CLI does with it
        assert read.status_code == 200, read.text
        gateway_id = read.json()["name"]
        assert gateway_id != flow_run_id and read.json()["idempotency_key"] == gateway_id
        assert gateway_id in read.json()["tags"]
        assert slow.get(f"/api/results/{run['id']}").json()["test_system_id"] == flow_run_id

        def running() -> dict[str, Any] | None:
            info = admin.get(f"/api/tasks/{flow_run_id}/status")
            assert info.status_code == 200, info.text
            return info.json() if info.json()["status"] == "started" else None

        info = wait_until(running, f"{flow_run_id} running", timeout=150, interval=0.1)
        assert info["task_id"] == gateway_id
        for run_id in (flow_run_id, gateway_id):
            assert slow.get(f"/api/system/status/{run_id}").json()["status"] == "RUNNING"  # until released
            assert admin.get(f"/api/tasks/{run_id}/result").json()["task_id"] == gateway_id
            listed = slow.get("/api/results", params={"test_system_id": run_id})
            assert listed.headers["X-Total-Count"] == "1" and listed.json()[0]["id"] == run["id"]
        cancel = admin.delete(f"/api/tasks/{flow_run_id}/cancel")
        assert cancel.status_code == 200 and cancel.json()["task_id"] == flow_run_id
        assert poll_result_status(slow, run["id"]) == 2
        for run_id in (flow_run_id, gateway_id):
            assert slow.get(f"/api/system/status/{run_id}").json() == {"status": "CANCELLED"}


# --------------------------------------------------------------------------------------------------- errors
def test_error_texts_of_the_contract(both_engines: Stack) -> None:
    repos = both_engines.repos
    with both_engines.client(ALICE) as alice:
        no_commit = submit(alice, "celery", None)
        assert (no_commit.status_code, no_commit.json()) == (400, {"detail": "commit is None"})
        unsupported = submit(alice, "mystery", repos.commit("passing"))
        assert (unsupported.status_code, unsupported.json()) == (
            400,
            {"detail": "execution_backend type not supported!"},
        )
        missing = submit(alice, "missing", repos.commit("passing"))
        assert missing.status_code == 404
        assert missing.json() == {
            "detail": "Worker [no-such-flow/system] is currently not available. Please wait a moment!"
        }
        nothing = alice.get("/api/results", params={"course_content_id": "cc-missing"})
        assert nothing.headers["X-Total-Count"] == "0"  # a refused job leaves no row behind
        not_found = alice.post("/api/tests", json={"directory": "no/such/dir", "version_identifier": "abc"})
        assert not_found.status_code == 404 and isinstance(not_found.json()["detail"], str)
        unit = alice.post("/api/tests", json={"course_content_path": "unit1", "version_identifier": "abc"})
        assert unit.status_code == 404


def test_max_submissions_counts_submitted_runs(both_engines: Stack) -> None:
    """And (25.8) the limit comes first, as in the contract: the same commit asked again is refused too."""
    commit = f"max-{uuid.uuid4().hex[:8]}"
    with both_engines.client(BOB) as bob:
        first = submit(bob, "capped", commit, submit=True)
        assert first.status_code == 200, first.text
        over = submit(bob, "capped", f"max-{uuid.uuid4().hex[:8]}", submit=True)
        again = submit(bob, "capped", commit, submit=True)
    for refused in (over, again):
        assert (refused.status_code, refused.json()) == (
            400,
            {"detail": "Reached max submissions for this course_content"},
        )


# ----------------------------------------------------------------------------------------------- write-back
def test_a_deployment_the_gateway_did_not_write_reports_through_patch(both_engines: Stack) -> None:
    """The flow finds its row by its own flow-run id, PATCHes RUNNING then a verdict with the worker account."""
    with both_engines.client(ALICE) as alice:
        run = submit(alice, "writeback", both_engines.repos.commit("passing")).json()
        assert run["status"] == 3
        assert poll_result_status(alice, run["id"]) == 0
        row = alice.get(f"/api/results/{run['id']}").json()
    assert row["result"] == 0.5 and row["result_json"]["summary"]["total"] == 2
    assert row["updated_by"] != row["created_by"]  # written by the worker account, not by the student
    with both_engines.client(ADMIN) as admin:
        info = admin.get(f"/api/tasks/{run['test_system_id']}/status").json()
        assert info["status"] == "finished"
        legs = flow_runs_by_leg(both_engines.prefect_api or "", [run["test_system_id"]])[run["test_system_id"]]
        assert len(legs) == 1
    # The flow found its row by the engine's run id while the run was open (its write-back landed above); once
    # closed, the run is out of the worker's reach (issue 23.6): the lookup finds nothing, a write is refused.
    with both_engines.client(WORKER) as worker:
        found = worker.get("/api/results", params={"test_system_id": legs[0]["id"]})
        assert found.status_code == 200 and found.headers["X-Total-Count"] == "0" and found.json() == []
        assert worker.patch(f"/api/results/{run['id']}", json={"status": 0, "result": 1.0}).status_code == 403
        assert worker.get(f"/api/results/{run['id']}").status_code == 403  # write-back only


# ------------------------------------------------------------------------------------------------- progress
@pytest.mark.parametrize("key", ["celery", "prefect"])
def test_progress_of_a_running_job_shows_in_the_task_view(both_engines: Stack, key: str) -> None:
    with both_engines.client(SLOW) as slow, both_engines.client(ADMIN) as admin:
        run = submit(slow, key, both_engines.repos.commit("slow")).json()
        task = run["test_system_id"]

        def running_with_progress() -> dict[str, Any] | None:
            info = admin.get(f"/api/tasks/{task}/status").json()
            assert info["status"] != "finished", f"finished before any progress was seen: {info}"
            progress = info["progress"]
            if info["status"] == "started" and progress and 0 < progress["percentage"] < 100:
                return info
            return None

        info = wait_until(running_with_progress, f"progress of {task}", timeout=150, interval=0.1)
        assert set(info) == TASK_INFO_KEYS and set(info["progress"]) == PROGRESS_KEYS
        assert type(info["progress"]["percentage"]) is int and info["progress"]["status"] == "running"
        assert isinstance(info["progress"]["metadata"], dict)
        assert slow.get(f"/api/results/{run['id']}/status").json() == 5  # RUNNING, as an int
        again = submit(slow, key, both_engines.repos.commit("slow")).json()  # in flight: the same row, no new run
        assert again["id"] == run["id"] and again["test_system_id"] == task
        assert poll_result_status(slow, run["id"], stack=both_engines) == 0
        done = admin.get(f"/api/tasks/{task}/status").json()
    assert done["status"] == "finished" and done["progress"]["percentage"] == 100


# ---------------------------------------------------------------------------------------- submission (submit=true)
@pytest.mark.parametrize("key", ["celery", "prefect"])
def test_submit_true_records_the_submission_after_a_completed_run(both_engines: Stack, key: str) -> None:
    commit = both_engines.repos.commit("passing")
    with both_engines.client(CAROL) as carol, both_engines.client(ADMIN) as admin:
        run = submit(carol, key, commit, submit=True).json()
        assert run["submit"] is True and run["submission_flow_run_id"] is None
        assert poll_result_status(carol, run["id"]) == 0
        again = submit(carol, key, commit, submit=True).json()
        assert again["id"] == run["id"]
        sub_id = again["submission_flow_run_id"]
        assert isinstance(sub_id, str) and sub_id != run["test_system_id"]

        def finished() -> dict[str, Any] | None:
            info = admin.get(f"/api/tasks/{sub_id}/status").json()
            return info if info["status"] in {"finished", "failed", "cancelled"} else None

        info = wait_until(finished, f"submission {sub_id}", timeout=150)
        assert info["status"] == "finished" and info["task_name"] == "ctutor_backend.tasks.submission_processing"
        recorded = admin.get(f"/api/tasks/{sub_id}/result").json()["result"]
    assert recorded["commit"] == commit and recorded["result_id"] == run["id"]
    heads = subprocess.run(
        ["git", "ls-remote", str(both_engines.data / "submissions.git")], capture_output=True, text=True, check=True
    ).stdout
    assert f"{commit}\t{recorded['ref']}" in heads and f"/m-carol/{DIRS[key].replace('/', '.')}" in recorded["ref"]


# ---------------------------------------------------------------------------------------- the rest of the API
def test_task_api_shapes(both_engines: Stack) -> None:
    with both_engines.client(ADMIN) as admin:
        types = admin.get("/api/tasks/types")
        assert types.status_code == 200
        assert types.json() == ["student_testing", "submission_processing"]  # the platform's registry names
        unknown = admin.post("/api/tasks/submit", json={"task_name": "no.such.task", "parameters": {}})
        assert unknown.status_code == 400 and isinstance(unknown.json()["detail"], str)
        workers = admin.get("/api/tasks/workers/status")  # fix: reachable, not shadowed by /{task_id}/status
        assert workers.status_code == 200 and isinstance(workers.json(), dict)
        # 25.3: the platform's keys beside the gateway's (engines, worker_list, queues by `engine:name`).
        shown = workers.json()
        assert shown["status"] == "connected" and shown["workers"]["active_count"] >= 1
        assert set(shown["workers"]["workers"]) == {w["name"] for w in shown["worker_list"]}
        assert isinstance(shown["queues"]["high_priority"], int) and "celery:high_priority" in shown["queues"]
        assert {"celery", "prefect"} <= set(shown["engines"])
        assert "redis://" not in workers.text and "postgresql" not in workers.text
        missing = admin.get(f"/api/tasks/{uuid.uuid4()}/status")
        assert missing.status_code == 404
        health = httpx.get(f"{both_engines.server.url}/api/tests-celery/health", timeout=30)  # no credentials
    assert health.status_code == 200
    assert health.json() == {"status": "healthy", "backend": "celery", "workers": health.json()["workers"],
                             "broker_status": "connected"}  # fmt: skip
    assert type(health.json()["workers"]) is int and health.json()["workers"] >= 1


def test_task_submit_runs_on_the_engine_and_answers_the_task_shapes(both_engines: Stack) -> None:
    url, commit = both_engines.repos.students["passing"]
    test_job = {"user_id": "u-t", "course_member_id": "m-task", "course_content_id": "cc-celery",
                "module": {"url": url, "commit": commit, "path": DIRS["celery"]}}  # fmt: skip
    with both_engines.client(ADMIN) as admin:
        resp = admin.post(
            "/api/tasks/submit",
            json={
                "task_name": "submission_processing",  # a short name, as /api/tasks/types lists it
                "parameters": {"submission": {"test_job": test_job}},
            },
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"task_id", "status", "message"} and body["status"] == "submitted"
        task = body["task_id"]
        info = wait_until(
            lambda: (i := admin.get(f"/api/tasks/{task}/status").json())["status"] in {"finished", "failed"} and i,
            f"task {task}",
        )
        result = admin.get(f"/api/tasks/{task}/result").json()
    assert info["status"] == "finished", info
    assert set(result) == TASK_RESULT_KEYS and result["result"]["commit"] == commit


def test_execution_backends_crud(both_engines: Stack) -> None:
    slug = f"extra-{uuid.uuid4().hex[:6]}"
    with both_engines.client(ADMIN) as admin:
        created = admin.post("/api/execution-backends", json={"type": "celery", "slug": slug, "properties": {}})
        assert created.status_code == 200, created.text
        backend = created.json()
        assert set(backend) == BACKEND_KEYS
        assert admin.post("/api/execution-backends", json={"type": "celery", "slug": slug}).status_code == 409
        assert admin.post("/api/execution-backends", json={"type": "celery", "slug": "bad slug!"}).status_code == 422
        listed = admin.get("/api/execution-backends")
        assert int(listed.headers["X-Total-Count"]) == len(listed.json()) >= 7
        assert all(set(b) == BACKEND_KEYS for b in listed.json())
        patched = admin.patch(f"/api/execution-backends/{backend['id']}", json={"properties": {"queue": "q"}})
        assert patched.status_code == 200 and patched.json()["properties"] == {"queue": "q"}
        assert admin.get(f"/api/execution-backends/{backend['id']}").json()["slug"] == slug
        assert admin.delete(f"/api/execution-backends/{backend['id']}").status_code in (200, 204)
        assert admin.get(f"/api/execution-backends/{backend['id']}").status_code == 404
