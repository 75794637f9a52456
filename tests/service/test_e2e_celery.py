"""End to end on a real Celery worker: a legacy client submits the example assignment and polls to completion;
and jobs submitted while the broker is down are all accepted, then all complete exactly once when it is back."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.examples import materialize_example
from gateway.store.catalog import load_catalog
from tests.service.conftest import PASSWORD, demo_catalog
from tests.service.server import GatewayServer, free_port, running_server, wait_for
from tests.support.celery_worker import base_env, running_worker, settings_from_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

FINAL = {0, 1, 2, 6}
ALICE = ("alice", PASSWORD)
BOB = ("bob", PASSWORD)


def example_catalog(dest: Path) -> tuple[dict[str, Any], Any]:
    repos = materialize_example(dest)
    catalog = demo_catalog(repos.reference_url, repos.reference_commit)
    catalog["course_contents"][0]["directory"] = repos.path
    catalog["course_members"] = [
        {"id": "m-alice", "user_id": "u-alice", "repository_url": repos.passing_url},
        {"id": "m-bob", "user_id": "u-bob", "repository_url": repos.failing_url},
    ]
    return catalog, repos


def poll_result_status(server: GatewayServer, auth: tuple[str, str], result_id: str, timeout: float = 120) -> int:
    with server.client(auth) as client:
        return (
            wait_for(
                lambda: (s := client.get(f"/api/results/{result_id}/status").json()) in FINAL and s + 100,
                timeout,
                what=f"result {result_id} to finish",
            )
            - 100
        )


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayServer, Any]]:
    data = tmp_path_factory.mktemp("gw-e2e")
    catalog, repos = example_catalog(data / "example")
    load_catalog(catalog, settings_from_env({"GATEWAY_DATA_DIR": str(data)}))
    with running_worker(base_env({}, data), concurrency=2), running_server({}, data) as server:
        yield server, repos


def test_legacy_client_polls_to_completion_on_both_status_paths(embedded_stack: tuple[GatewayServer, Any]) -> None:
    server, repos = embedded_stack
    with server.client(ALICE) as alice, server.client(BOB) as bob:
        ok = alice.post("/api/tests", json={"directory": repos.path, "version_identifier": repos.passing_commit})
        bad = bob.post("/api/tests", json={"directory": repos.path, "version_identifier": repos.failing_commit})
        assert ok.status_code == 200 and bad.status_code == 200
        ok_run, bad_run = ok.json(), bad.json()
        # Path 1: the system status by run id, until a final name.
        final_names = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
        name = wait_for(
            lambda: (
                (n := alice.get(f"/api/system/status/{ok_run['test_system_id']}").json()["status"]) in final_names and n
            ),
            120,
            what="system status",
        )
        assert name == "COMPLETED"
        # Path 2: the bare int status of the row.
        assert poll_result_status(server, BOB, bad_run["id"]) == 0
        good = alice.get(f"/api/results/{ok_run['id']}").json()
        failing = bob.get(f"/api/results/{bad_run['id']}").json()
    assert good["status"] == 0 and good["result"] == 1.0
    assert good["result_json"]["summary"]["total"] == good["result_json"]["summary"]["passed"] > 0
    summary = failing["result_json"]["summary"]
    assert summary["failed"] >= 1 and failing["result"] == pytest.approx(summary["passed"] / summary["total"])
    # The same run as a task view, with its progress from the engine.
    with server.client(("admin", PASSWORD)) as admin:
        info = admin.get(f"/api/tasks/{ok_run['test_system_id']}/status").json()
        result = admin.get(f"/api/tasks/{ok_run['test_system_id']}/result").json()
    assert info["status"] == "finished" and result["result"]["summary"] == good["result_json"]["summary"]
    # Resubmitting a completed commit returns the same row, no new run.
    with server.client(ALICE) as alice:
        again = alice.post("/api/tests", json={"directory": repos.path, "version_identifier": repos.passing_commit})
    assert again.json()["id"] == ok_run["id"]


@contextlib.contextmanager
def redis_server(port: int, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A private redis-server on `port`, in its own process group, stopped by pid."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(workdir)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        wait_for(lambda: _pings(client), 20, what="redis-server")
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_broker_down_at_submit_every_job_completes_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "gw-outbox"
    catalog, repos = example_catalog(tmp_path / "example")
    port = free_port()  # nothing listens here yet
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "GATEWAY_RECONCILE_INTERVAL": "0.3"}
    load_catalog(catalog, settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)}))
    commits = [repos.passing_commit]
    # More distinct runs of the same assignment: one per extra member, each its own row and leg.
    extra = [{"id": f"m-x{i}", "user_id": f"u-x{i}", "repository_url": repos.passing_url} for i in range(3)]
    load_catalog({"course_members": extra}, settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)}))
    with running_server(env, data) as server:
        runs = []
        with server.client(("admin", PASSWORD)) as admin:
            for member in ["m-alice", *(m["id"] for m in extra)]:
                resp = admin.post(
                    "/api/tests",
                    json={"directory": repos.path, "version_identifier": commits[0], "course_member_id": member},
                )
                assert resp.status_code == 200, resp.text
                assert resp.json()["status"] == 3
                runs.append(resp.json())

            # State and reason visible once the relay's first attempt found the broker down.
            def explained() -> dict[str, Any] | None:
                got: dict[str, Any] = admin.get(f"/api/system/status/{runs[0]['test_system_id']}").json()
                return got if "message" in got else None

            waiting = wait_until(explained, "the status to say why the job waits")
            assert waiting["status"] == "SCHEDULED" and "waiting" in waiting["message"]
            info = admin.get(f"/api/tasks/{runs[0]['test_system_id']}/status").json()
            assert info["status"] == "queued" and info["error"]  # state and reason visible
        with redis_server(port, tmp_path / "redis"), running_worker(base_env(env, data), concurrency=2) as worker:
            for run in runs:
                assert poll_result_status(server, ("admin", PASSWORD), run["id"], timeout=180) == 0
            log = worker.log_text()
    for run in runs:
        succeeded = re.findall(rf"\[{re.escape(run['test_system_id'])}\] succeeded", log)
        assert len(succeeded) == 1, f"{run['test_system_id']} ran {len(succeeded)} times"
