"""An operator's rollback holds automation: pause, resume and the hold through the admin API and the CLI, against
a real uvicorn process (SQLite store)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.catalog import load_catalog
from tests.fast.conftest import catalog
from tests.service.conftest import PASSWORD
from tests.service.server import GatewayServer, running_server
from tests.support.celery_worker import settings_from_env

ADMIN = ("admin", PASSWORD)
ALICE = ("alice", PASSWORD)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    data = tmp_path_factory.mktemp("gw-hold")
    load_catalog(catalog(), settings_from_env({"GATEWAY_DATA_DIR": str(data)}))
    with running_server({}, data) as server:
        yield server


def test_a_manual_demotion_pauses_and_resume_releases(api: GatewayServer) -> None:
    with api.client(ADMIN) as admin:
        base = "/api/admin/cutover/content/week2.ex1"
        assert admin.post(f"{base}/set", json={"new_engine": "celery", "stage": "canary", "percentage": 25,
                                               "policy": "auto"}).status_code == 200  # fmt: skip
        assert admin.get(f"{base}/hold").json() == {"paused": False, "hold": None}
        assert admin.post(f"{base}/demote", json={"reason": "students report timeouts"}).status_code == 200
        hold = admin.get(f"{base}/hold").json()
        assert hold["paused"] and (hold["hold"]["action"], hold["hold"]["actor"]) == ("demote", "admin")
        assert admin.post(f"{base}/pause", json={}).status_code == 409  # already paused
        (card,) = [c for c in admin.get("/api/cutover/scorecard").json() if c["label"] == "week2.ex1"]
        assert card["paused"] and card["hold"]["reason"] == "students report timeouts"
        resumed = admin.post(f"{base}/resume", json={"reason": "fixed"})
        assert resumed.status_code == 200 and resumed.json()["paused"] is False
        assert resumed.json()["event"]["action"] == "resume"
    with api.client(ALICE) as alice:
        assert alice.post(f"{base}/pause", json={}).status_code == 403
    gateway = [str(Path(sys.executable).with_name("gateway"))]
    command = [*gateway, "cutover", "pause", "--content", "week2.ex1", "--reason", "exam week", "--json"]
    paused = subprocess.run(command, env=api.env, capture_output=True, text=True, timeout=60, check=False)
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["hold"]["reason"] == "exam week"
    status = subprocess.run([*gateway, "cutover", "status"], env={**api.env, "COLUMNS": "400"}, capture_output=True,
                            text=True, timeout=60, check=True)  # fmt: skip
    assert "paused" in status.stdout
