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
from pathlib import Path
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
from tests.support.contract_keys import TASK_INFO_KEYS, TASK_LIST_ITEM_KEYS
from tests.support.git import git
from tests.support.platform_celery_worker import PLATFORM_SCORE

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


class CliResultGet(BaseModel):
    """How the platform's CLI reads the `POST /tests` answer: as its `ResultGet` (pydantic's default: extra keys
    ignored; `course_content_type_id` and the dates required)."""

    id: str
    submit: bool
    course_member_id: str
    course_content_id: str
    course_content_type_id: str
    course_submission_group_id: str | None = None
    execution_backend_id: str
    test_system_id: str
    result: float
    result_json: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    version_identifier: str
    status: int
    created_at: datetime
    updated_at: datetime
    created_by: str | None = None
    updated_by: str | None = None


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


def test_two_submissions_of_one_member_and_content_at_once_are_both_recorded(stack: Stack) -> None:
    """25.5: two commits of the same member and content submitted together (their submissions race for the same
    branch of the submissions repository on a worker with two slots): both submissions finish and both commits
    are recorded; the branch holds one of them."""
    repo = Path(stack.repos.students["passing"][0].removeprefix("file://"))
    commits = []
    for i in range(2):
        git(["commit", "-q", "--allow-empty", "--no-gpg-sign", "-m", f"again {i} {uuid.uuid4().hex[:6]}"], repo)
        commits.append(git(["rev-parse", "HEAD"], repo))
    with stack.client(CAROL) as carol, stack.client(ADMIN) as admin:
        runs = [submit(carol, "celery", commit, submit=True) for commit in commits]
        for run in runs:
            assert final_status(carol, run["id"]) == 0
        sub_ids = [submit(carol, "celery", c, submit=True)["submission_flow_run_id"] for c in commits]
        infos = [task_finished(admin, sub_id) for sub_id in sub_ids]
        rows = [carol.get(f"/api/results/{run['id']}").json() for run in runs]
    assert [info["status"] for info in infos] == ["finished", "finished"], infos
    assert all(row["submit"] is True and row["properties"]["submission"]["status"] == "COMPLETED" for row in rows)
    bare = stack.data / "submissions.git"
    for commit in commits:
        recorded = git(["--git-dir", str(bare), "rev-parse", f"refs/submissions/m-carol/c.ex1/{commit}"], bare)
        assert recorded == commit
    assert git(["--git-dir", str(bare), "rev-parse", "refs/heads/submissions/m-carol/c.ex1"], bare) in commits


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


def test_a_custom_submission_deployment_receives_what_the_platform_sent(stack: Stack) -> None:
    """12.4 + 25.1: `properties.submission_deployment` names a deployment with the platform's `submit-result`
    signature (one parameter, `submission: Submission`, Prefect checks runs against it); it gets exactly
    `{"submission": Submission.model_dump(exclude_none=True)}`, `token` is the credential's name, and the secret
    that was (wrongly) inside the member's repository URL appears nowhere: not in Prefect, not in what the
    gateway shows. The row says the submission ran; `submission_flow_run_id` is the Prefect flow run id."""
    commit = stack.repos.commit("passing")
    ref_url, ref_commit = stack.repos.reference
    with stack.client(DAVE) as dave, stack.client(ADMIN) as admin:
        run = submit(dave, "legacy-submit", commit, submit=True)
        assert final_status(dave, run["id"]) == 0  # closed by the write-back flow
        sub_id = submit(dave, "legacy-submit", commit, submit=True)["submission_flow_run_id"]
        assert isinstance(sub_id, str)
        info = task_finished(admin, sub_id)
        assert info["status"] == "finished", info
        parsed = admin.get(f"/api/tasks/{sub_id}/result").json()["result"]
        row = admin.get(f"/api/results/{run['id']}").json()
        # Asked again once Prefect has the run: the answer names the flow run itself (the first answer came
        # before the run existed: the gateway's id, which still resolves above).
        flow_run_id = submit(dave, "legacy-submit", commit, submit=True)["submission_flow_run_id"]
        shown = [info, parsed, row, admin.get("/api/tasks").json()]
    assert stack.prefect_api is not None
    read = httpx.get(f"{stack.prefect_api}/flow_runs/{flow_run_id}", timeout=30)
    assert read.status_code == 200, read.text
    flow_run = read.json()
    assert flow_run["idempotency_key"] == info["task_id"] and flow_run_id != info["task_id"]
    (sent,) = flow_run["parameters"].values()
    assert list(flow_run["parameters"]) == ["submission"]
    # The platform's types parsed exactly what was sent (nothing missing or defaulted); the one key they ignore
    # is each repository's credential name, which a gateway-aware worker resolves.
    names = {key: sent[key].pop("credential") for key in ("submission", "module")}
    assert parsed == sent and names == {"submission": DAVE_CREDENTIAL, "module": DAVE_CREDENTIAL}
    assert sent["provider"] == "https://git.example.invalid" and sent["full_path"] == "course/dave"
    assert sent["token"] == DAVE_CREDENTIAL and sent["user_id"] == "u-dave" and sent["result_id"] == run["id"]
    assert sent["submission"] == {"url": "https://git.example.invalid/course/dave.git", "branch": "main"}
    assert sent["module"] == {"url": "https://git.example.invalid/course/dave.git", "branch": "main",
                              "commit": commit, "path": DIRS["legacy-submit"]}  # fmt: skip
    assignment = sent["assignment"]
    assert assignment["id"] == "cc-legacy-submit" and assignment["path"] == DIRS["legacy-submit"].replace("/", ".")
    assert assignment["properties"]["gitlab"]["directory"] == DIRS["legacy-submit"]
    assert assignment["version_identifier"] == ref_commit and assignment["course_content_type_id"] == "assignment"
    assert ref_url not in repr(sent)  # the course's repository is the worker's to know, by its credential
    assert "user:u-dave" in flow_run["tags"]
    assert row["submit"] is True and row["properties"]["submission"]["status"] == "COMPLETED"
    assert row["properties"]["submission"]["run_id"] == flow_run_id
    everything = repr([flow_run, shown])
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


def test_the_cli_parses_the_post_answer_as_result_get(stack: Stack) -> None:
    """25.2: the answer is a superset of `TestRunResponse`: the CLI's `ResultGet` parse needs the meta keys,
    on a new run and on a kept one alike, on both submit routes."""
    commit = f"cli-{uuid.uuid4().hex[:8]}"
    with stack.client(SLOW) as slow, stack.client(ADMIN) as admin:
        try:
            new = slow.post("/api/tests", json={"directory": DIRS["celery"], "version_identifier": commit})
            kept = slow.post("/tests-celery", json={"directory": DIRS["celery"], "version_identifier": commit})
            assert new.status_code == kept.status_code == 200, (new.text, kept.text)
            for answer in (new.json(), kept.json()):
                parsed = CliResultGet.model_validate(answer)
                assert parsed.course_content_type_id == "assignment" and parsed.status == 3
                assert "submission_flow_run_id" in answer  # the contract's keys stay
            assert kept.json()["id"] == new.json()["id"]
            row = CliResultGet.model_validate(slow.get(f"/api/results/{new.json()['id']}").json())
            answered = CliResultGet.model_validate(new.json())
            assert answered.created_at == row.created_at and answered.created_by == row.created_by
        finally:
            admin.delete(f"/api/tasks/{new.json()['test_system_id']}")


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
        # A task's id is the gateway's (a Prefect run's `test_system_id` is its flow run id, 25.7): either resolves.
        task_ids = [admin.get(f"/api/tasks/{r['test_system_id']}").json()["task_id"] for r in runs]
        page = admin.get("/api/tasks", params={"limit": 2, "offset": 0})
        assert page.status_code == 200 and set(page.json()) == {"tasks", "total", "limit", "offset", "has_more"}
        assert page.headers["X-Total-Count"] == str(page.json()["total"])
        assert page.json()["has_more"] is (page.json()["total"] > 2)
        assert len(page.json()["tasks"]) == 2
        assert all(set(t) == TASK_LIST_ITEM_KEYS for t in page.json()["tasks"])
        # The stack is shared: a leg of another test (a re-run, a shadow) may be listed between or after ours, so
        # the order is checked on positions, and paging on a listing that stayed the same across the two reads.
        listed = [t["task_id"] for t in admin.get("/api/tasks", params={"limit": 1000}).json()["tasks"]]
        assert listed.index(task_ids[1]) < listed.index(task_ids[0]), "newest first"
        for _ in range(20):
            before = [t["task_id"] for t in admin.get("/api/tasks", params={"limit": 2}).json()["tasks"]]
            second = [t["task_id"] for t in admin.get("/api/tasks", params={"limit": 1, "offset": 1}).json()["tasks"]]
            after = [t["task_id"] for t in admin.get("/api/tasks", params={"limit": 2}).json()["tasks"]]
            if before == after:
                break
        assert before == after, "the listing kept changing"
        assert second == before[1:]
        for run in runs:
            task = run["test_system_id"]
            info = admin.get(f"/api/tasks/{task}")
            assert info.status_code == 200 and set(info.json()) == TASK_INFO_KEYS
            deleted = admin.delete(f"/api/tasks/{task}")
            assert deleted.status_code == 200 and deleted.json()["status"] == "cancelled"
            assert slow.get(f"/api/results/{run['id']}/status").json() == 2
        assert admin.get(f"/api/tasks/{uuid.uuid4()}").status_code == 404
        # 25.3: the platform's front end filters and switches on Celery's words.
        revoked = admin.get("/api/tasks", params={"status": "REVOKED", "limit": 1000}).json()
        ours = set(task_ids)
        assert ours <= {t["task_id"] for t in revoked["tasks"]} and revoked["has_more"] is False
        assert all(t["status"] == "REVOKED" and t["task_status"] == "cancelled" for t in revoked["tasks"])
        assert all(
            t["date_done"] is not None and t["has_result"] is False for t in revoked["tasks"] if t["task_id"] in ours
        )
        for word, gateway_word in (("SUCCESS", "finished"), ("PENDING", None), ("STARTED", "started")):
            listed = admin.get("/api/tasks", params={"status": word, "limit": 1000}).json()
            assert not ours & {t["task_id"] for t in listed["tasks"]}
            assert all(t["status"] == word for t in listed["tasks"]) and listed["total"] == len(listed["tasks"])
            assert gateway_word is None or all(t["task_status"] == gateway_word for t in listed["tasks"])
        assert admin.get("/api/tasks", params={"status": "cancelled"}).json()["total"] == revoked["total"]
        assert admin.get("/api/tasks", params={"status": "NOPE"}).status_code == 400


# ----------------------------------------------------------------------------------------------- mixed fleet
@pytest.fixture
def platform_worker_only(stack: Stack) -> Iterator[WorkerProcess]:
    """The stack's own workers stopped, the platform's Celery worker (its own app and task names, Celery's stock
    database result backend) on the platform's queues in their place; the gateway's back afterwards."""
    for worker in stack.workers:
        stop_worker(worker, graceful=False)  # gone before the test begins: how they stop is not what it tests
    name = f"platform-{uuid.uuid4().hex[:6]}@localhost"
    env = base_env(stack.env, stack.data)
    log_path = stack.log_dir / f"{name.split('@')[0]}.log"
    cmd = [sys.executable, "-m", "celery", "-A", "tests.support.platform_celery_worker", "worker",
           "-Q", "high_priority,default,low_priority", "-c", "1", "-P", "solo", f"--hostname={name}",
           "--loglevel=INFO"]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = WorkerProcess(process=process, hostname=name, log_path=log_path, env=env)
    try:
        wait_until_ready(worker, 90)
        yield worker
    finally:
        stop_worker(worker, graceful=False)
        if not any(w.process.poll() is None for w in stack.workers):
            stack.start_worker()


def test_a_platform_worker_on_the_shared_queues_causes_a_rerun_never_a_grade(
    stack: Stack, platform_worker_only: WorkerProcess
) -> None:
    """25.4: the platform's worker takes the job and stores its pickled `{success, results: {score: 80}}` with
    Celery's stock backend: an infrastructure error, re-run within GATEWAY_INFRA_RETRIES on the queue only the
    gateway's workers consume (so the platform's worker, still running, cannot take it again); the row never
    shows the platform's score and is graded from the gateway worker's report."""
    commit = stack.repos.commit("failing")
    with stack.client(BOB) as bob, stack.client(ADMIN) as admin:
        run = submit(bob, "celery", commit)
        task = admin.get(f"/api/tasks/{run['test_system_id']}").json()["task_id"]

        def rerun_waiting() -> dict[str, Any] | None:
            info = admin.get(f"/api/tasks/{task}").json()
            return info if "running it again" in (info["error"] or "") else None

        waiting = wait_until(rerun_waiting, "the unreadable result to be run again", timeout=150)
        assert "pickle" in waiting["error"] and waiting["status"] in {"queued", "deferred"}
        row = bob.get(f"/api/results/{run['id']}").json()
        assert (row["status"], row["result"], row["result_json"]) == (3, 0.0, None)  # nothing graded
        # The rerun waits where the platform's worker does not listen.
        wait_until(lambda: admin.get("/api/tasks/workers/status").json()["queues"]["gateway_only"] == 1 or None,
                   "the rerun on the gateway-only queue", timeout=60)  # fmt: skip
        gateway = stack.start_worker()
        assert final_status(bob, run["id"]) == 0
        graded = bob.get(f"/api/results/{run['id']}").json()
        info = admin.get(f"/api/tasks/{task}").json()
    assert info["worker"] == gateway.hostname and info["queue"] == "gateway_only"
    assert graded["result"] != PLATFORM_SCORE / 100 and "score" not in graded["result_json"]
    assert graded["result_json"]["summary"]["total"] > 0  # the gateway's own report
    assert platform_worker_only.process.poll() is None  # it ran all along: avoided, not stopped
