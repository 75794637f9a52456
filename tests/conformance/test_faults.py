"""Faults a legacy client must not notice (beyond a delay): bad input, a Celery worker killed mid-job, and the
Prefect server down while jobs are submitted. (Redis down at submit is tests/service/test_e2e_celery.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
    SLOW,
    Stack,
    build_repos,
    catalog,
    flow_runs_by_leg,
    prefect_server_on,
    runner_env,
    wait_until,
)
from sqlalchemy import update

from gateway.engines.relay import DEPLOYMENT_GRACE
from gateway.store.catalog import load_catalog
from gateway.store.db import make_sync_engine
from gateway.store.models import Leg
from tests.service.server import running_server
from tests.support.celery_worker import kill_worker, settings_from_env
from tests.support.prefect_server import free_port, running_runner

pytestmark = [pytest.mark.slow]


def final_status(client: httpx.Client, result_id: str, timeout: float = 180, stack: Stack | None = None) -> int:
    """Poll the row to a final status; with `stack`, slow student runs are released as they start waiting."""

    def done() -> tuple[int] | None:
        if stack is not None:
            stack.release_slow_runs()
        value = client.get(f"/api/results/{result_id}/status").json()
        return (value,) if value in FINAL else None

    return wait_until(done, f"result {result_id} to finish", timeout)[0]


# ------------------------------------------------------------------------------------------------- bad input
NUL = "a\x00b"
# (method, path, httpx arguments); `or_empty`: a list filter may also answer 200 with nothing found.
BAD_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/tests", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ("POST", "/api/tests", {"content": b"directory=c/ex1", "headers": {"content-type": "text/plain"}}),
    ("POST", "/api/tests", {"json": ["c/ex1"]}),
    ("POST", "/api/tests", {"json": "c/ex1"}),
    ("POST", "/api/tests", {"json": {"directory": DIRS["celery"], "version_identifier": {"sha": 1}}}),
    ("POST", "/api/tests", {"json": {"directory": DIRS["celery"], "version_identifier": "x", "submit": "maybe"}}),
    ("POST", "/api/tests", {"json": {"course_content_id": ["cc-celery"], "version_identifier": "x"}}),
    ("POST", "/api/tests", {"json": {"directory": NUL, "version_identifier": "x"}}),
    ("POST", "/api/tests", {"json": {"course_content_path": "p" * 20000, "version_identifier": "x"}}),
    ("POST", "/api/tests", {"json": {"directory": DIRS["celery"], "version_identifier": NUL}}),
    ("POST", "/api/tests", {"json": {"directory": DIRS["celery"], "version_identifier": "v" * 5000}}),
    ("POST", "/api/tests", {"json": {"directory": DIRS["celery"], "version_identifier": "--upload-pack=x"}}),
    ("POST", "/api/tests-celery", {"json": {}}),
    ("GET", "/api/results/does-not-exist", {}),
    ("GET", "/api/results/" + "9" * 300, {}),
    ("GET", "/api/results/%00", {}),
    ("GET", "/api/results/..%2F..%2Fetc%2Fpasswd/status", {}),
    ("GET", "/api/results", {"params": {"status": "abc"}}),
    ("GET", "/api/results", {"params": {"skip": "-1"}}),
    ("GET", "/api/results", {"params": {"limit": "0"}}),
    ("GET", "/api/results", {"params": {"submit": "perhaps"}}),
    ("GET", "/api/results", {"params": {"test_system_id": NUL}, "or_empty": True}),
    ("GET", "/api/results", {"params": {"status": str(2**40)}, "or_empty": True}),
    ("GET", "/api/results", {"params": {"skip": str(2**70)}}),
    ("GET", "/api/system/status/%00", {}),
    ("GET", "/api/system/status/" + "x" * 2000, {}),
    ("PATCH", "/api/results/does-not-exist", {"json": {"status": 0}}),
    ("PATCH", "/api/results/does-not-exist", {"json": {"result": 2.0}}),
    ("PATCH", "/api/results/does-not-exist", {"json": {"status": "done"}}),
    ("PATCH", "/api/results/does-not-exist", {"json": {"result_json": [1, 2]}}),
    ("POST", "/api/tasks/submit", {"json": {}}),
    ("POST", "/api/tasks/submit", {"json": {"task_name": 5}}),
    ("POST", "/api/tasks/submit", {"json": {"task_name": "ctutor_backend.tasks.student_testing", "priority": 99}}),
    ("POST", "/api/tasks/submit", {"json": {"task_name": "ctutor_backend.tasks.student_testing", "delay": -1}}),
    ("POST", "/api/tasks/submit", {"json": {"task_name": "ctutor_backend.tasks.student_testing", "parameters": []}}),
    ("GET", "/api/tasks/%00/status", {}),
    ("GET", "/api/tasks/nope/result", {}),
    ("DELETE", "/api/tasks/nope/cancel", {}),
    ("POST", "/api/execution-backends", {"json": {}}),
    ("POST", "/api/execution-backends", {"json": {"type": "celery", "slug": ""}}),
    ("POST", "/api/execution-backends", {"json": {"type": "celery", "slug": "a/b"}}),
    ("PATCH", "/api/execution-backends/nope", {"json": {"slug": "ok"}}),
    ("GET", "/api/execution-backends/%00", {}),
]


@pytest.fixture(scope="module")
def embedded_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The API alone on the embedded default (SQLite store): the same inputs against the other database."""
    data = tmp_path_factory.mktemp("conf-embedded")
    repos = build_repos(data / "repos")
    load_catalog(catalog(repos), settings_from_env({"GATEWAY_DATA_DIR": str(data)}))
    with running_server({}, data) as server:
        yield server


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
def test_bad_bodies_and_ids_answer_a_clear_4xx_never_a_500(store: str, request: pytest.FixtureRequest) -> None:
    server = (
        request.getfixturevalue("celery_stack").server
        if store == "postgres"
        else request.getfixturevalue("embedded_api")
    )
    failures = []
    with server.client(ADMIN) as admin:
        for method, path, spec in BAD_REQUESTS:
            kwargs = {k: v for k, v in spec.items() if k != "or_empty"}
            try:
                resp = admin.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                failures.append(f"{method} {path} {str(kwargs)[:80]} -> {type(exc).__name__}: {exc}")
                continue
            if spec.get("or_empty") and resp.status_code == 200:
                if resp.json() != [] or resp.headers["X-Total-Count"] != "0":  # a filter nothing matches
                    failures.append(f"{method} {path} {str(kwargs)[:80]} -> 200 {resp.text[:200]}")
                continue
            ok = 400 <= resp.status_code < 500
            try:
                detail = resp.json().get("detail")
            except (ValueError, AttributeError):
                detail = None
            if not ok or not detail:
                failures.append(f"{method} {path} {str(kwargs)[:80]} -> {resp.status_code} {resp.text[:200]}")
    assert not failures, "\n".join(failures)
    assert "Traceback" not in server.log_text()


def test_without_credentials_401_and_someone_elses_result_404(celery_stack: Stack) -> None:
    with celery_stack.client(ALICE) as alice:
        run = alice.post("/api/tests", json={"directory": DIRS["capped"], "version_identifier": "auth-x"}).json()
    anonymous = httpx.get(f"{celery_stack.server.url}/api/results/{run['id']}", timeout=30)
    assert anonymous.status_code == 401 and "detail" in anonymous.json()
    with celery_stack.client(BOB) as bob:
        assert bob.get(f"/api/results/{run['id']}").status_code == 404
        assert bob.get(f"/api/results/{run['id']}/status").status_code == 404
        assert bob.get(f"/api/system/status/{run['test_system_id']}").status_code == 404


# ------------------------------------------------------------------------------------------- a worker killed
def test_a_worker_killed_mid_job_the_job_still_completes_once(celery_stack: Stack) -> None:
    """SIGKILL the worker while the gateway's job runs: Redis redelivers it to a new worker, the row completes."""
    first = celery_stack.worker
    with celery_stack.client(SLOW) as slow, celery_stack.client(ADMIN) as admin:
        run = slow.post(
            "/api/tests", json={"directory": DIRS["celery"], "version_identifier": celery_stack.repos.commit("slow")}
        ).json()
        task = run["test_system_id"]

        def running_on_first() -> dict[str, Any] | None:
            info = admin.get(f"/api/tasks/{task}/status").json()
            assert info["status"] != "finished", info
            return info if info["status"] == "started" and info["worker"] == first.hostname else None

        wait_until(running_on_first, f"{task} running on {first.hostname}", timeout=90, interval=0.1)
        kill_worker(first)
        assert admin.get(f"/api/tasks/{task}/status").json()["status"] == "started"  # killed mid-job
        # A new worker restores unacknowledged messages older than its visibility timeout (short here).
        second = celery_stack.start_worker({"CELERY_VISIBILITY_TIMEOUT": "3"})
        assert final_status(slow, run["id"], stack=celery_stack) == 0
        row = slow.get(f"/api/results/{run['id']}").json()
        info = admin.get(f"/api/tasks/{task}/status").json()
    assert row["result"] == 1.0 and info["status"] == "finished" and info["worker"] == second.hostname
    succeeded = re.findall(rf"\[{re.escape(task)}\] succeeded", second.log_text() + first.log_text())
    assert len(succeeded) == 1


# ------------------------------------------------------------------------------------- the Prefect server down
@pytest.fixture
def prefect_down_api(tmp_path: Path) -> Iterator[tuple[Any, int, Any, Path]]:
    """An API (embedded store) whose Prefect server is not running yet: it will come up on `port`."""
    data = tmp_path / "data"
    repos = build_repos(tmp_path / "repos")
    port = free_port()
    env = {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "GATEWAY_RECONCILE_INTERVAL": "0.3"}
    load_catalog(catalog(repos), settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)}))
    with running_server(env, data) as server:
        yield server, port, repos, data


def test_prefect_server_down_at_submit_every_job_completes_exactly_once(
    prefect_down_api: tuple[Any, int, Any, Path], tmp_path: Path
) -> None:
    server, port, repos, data = prefect_down_api
    jobs = [(ALICE, "prefect", "passing"), (BOB, "prefect", "failing"), (CAROL, "legacy", "passing"),
            (ALICE, "legacy", "passing")]  # fmt: skip
    runs = []
    for auth, key, student in jobs:
        with server.client(auth) as client:
            resp = client.post("/api/tests", json={"directory": DIRS[key], "version_identifier": repos.commit(student)})
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == 3
        runs.append((auth, resp.json()))
    # Two jobs for a deployment that will never exist, accepted while nobody can tell: one accepted "long ago"
    # (its created_at moved back past the grace: setting up time, not faking the engine), one just now.
    missing = []
    for auth in (BOB, CAROL):
        with server.client(auth) as client:
            resp = client.post("/api/tests", json={"directory": DIRS["missing"], "version_identifier": "abc1234"})
        assert resp.status_code == 200 and resp.json()["status"] == 3, resp.text
        missing.append(resp.json())
    engine = make_sync_engine(settings_from_env({"GATEWAY_DATA_DIR": str(data)}))
    with engine.begin() as conn:
        long_ago = datetime.now(UTC) - DEPLOYMENT_GRACE - timedelta(minutes=1)
        conn.execute(update(Leg).where(Leg.id == missing[0]["test_system_id"]).values(created_at=long_ago))
    engine.dispose()
    with server.client(ADMIN) as admin:
        waiting = admin.get(f"/api/system/status/{runs[0][1]['test_system_id']}").json()
        assert waiting["status"] == "SCHEDULED" and "waiting" in waiting["message"]
        info = admin.get(f"/api/tasks/{runs[0][1]['test_system_id']}/status").json()
        assert info["status"] == "queued" and info["error"]  # state and reason visible
    root = tmp_path / "prefect"
    with prefect_server_on(port, root) as api_url:
        with running_runner(runner_env(api_url, root, data, server), limit=4, log_path=root / "runner.log"):
            for auth, run in runs:
                with server.client(auth) as client:
                    assert final_status(client, run["id"]) == 0
            with server.client(ADMIN) as admin:
                # Past the grace: failed with the legacy error shape. Within it: still waiting, and saying why.
                assert final_status(admin, missing[0]["id"]) == 1
                failed = admin.get(f"/api/results/{missing[0]['id']}").json()["result_json"]
                assert failed == {
                    "prefect_exception": "InfrastructureError",
                    "message": "The execution backend's deployment does not exist.",
                    "details": failed["details"],
                }
                assert "no-such-flow/system" in failed["details"]
                still = admin.get(f"/api/system/status/{missing[1]['test_system_id']}").json()
                assert still["status"] == "SCHEDULED" and "no-such-flow/system" in still["message"]
        by_leg = flow_runs_by_leg(api_url, [run["test_system_id"] for _, run in runs])
        total = httpx.post(f"{api_url}/flow_runs/count", json={}, timeout=30).json()
    assert {leg: len(found) for leg, found in by_leg.items()} == {run["test_system_id"]: 1 for _, run in runs}
    assert all(found[0]["state_type"] == "COMPLETED" for found in by_leg.values())
    assert total == len(runs)  # nothing ran twice, nothing else ran
