"""The cutover's admin API and CLI against a real uvicorn process (SQLite store): changes, dry runs, history,
the routing record of a job, and the student's 403."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.catalog import load_catalog
from tests.fast.conftest import catalog
from tests.gateway.conftest import PASSWORD
from tests.gateway.server import GatewayServer, running_server
from tests.support.celery_worker import settings_from_env

ADMIN = ("admin", PASSWORD)
ALICE = ("alice", PASSWORD)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    data = tmp_path_factory.mktemp("gw-cutover")
    load_catalog(catalog(), settings_from_env({"GATEWAY_DATA_DIR": str(data)}))
    with running_server({}, data) as server:
        yield server


def test_change_dry_run_history_and_the_routing_record(api: GatewayServer) -> None:
    with api.client(ADMIN) as admin:
        dry = admin.post(
            "/api/admin/cutover/content/week2.ex1/set",
            json={"new_engine": "celery", "stage": "new_only", "dry_run": True, "members": ["m-alice"]},
        )
        assert dry.status_code == 200, dry.text
        assert dry.json()["applied"] is False and dry.json()["preview"][0]["after"] == "celery"
        assert admin.get("/api/admin/cutover").json() == []  # the dry run saved nothing

        done = admin.post(
            "/api/admin/cutover/content/week2.ex1/set",
            json={"new_engine": "celery", "stage": "new_only", "reason": "all in"},
        )
        assert done.status_code == 200 and done.json()["applied"] is True
        run = admin.post("/api/tests", json={"directory": "week2/ex1", "course_member_id": "m-alice",
                                             "version_identifier": "abc1"})  # fmt: skip
        assert run.status_code == 200, run.text
        routing = admin.get(f"/api/admin/results/{run.json()['id']}/routing").json()
        (leg,) = routing["legs"]
        assert leg["engine"] == "celery"
        assert (leg["routing"]["stage"], leg["routing"]["config_version"]) == ("new_only", 1)

        refused = admin.post("/api/admin/cutover/content/week2.ex1/promote", json={})
        assert refused.status_code == 422 and "last stage" in refused.json()["detail"]
        assert admin.post("/api/admin/cutover/content/nothing/promote", json={}).status_code == 404
        assert admin.post("/api/admin/cutover/content/week2.ex1/set", json={"bogus": 1}).status_code == 422
        back = admin.post("/api/admin/cutover/content/cc-prefect/rollback", json={"reason": "parity"})
        assert back.json()["after"]["stage"] == "old_only"
        history = admin.get("/api/admin/cutover/content/cc-prefect/history").json()
        assert [(e["action"], e["to_stage"], e["actor"], e["reason"]) for e in history] == [
            ("rollback", "old_only", "admin", "parity"),
            ("set", "new_only", "admin", "all in"),
        ]
    with api.client(ALICE) as alice:
        assert alice.get("/api/admin/cutover").status_code == 403
        assert alice.post("/api/admin/cutover/content/cc-prefect/promote", json={}).status_code == 403


def test_cli_reads_and_writes_the_same_log(api: GatewayServer) -> None:
    env = api.env
    gateway = [str(Path(sys.executable).with_name("gateway"))]
    done = subprocess.run(
        [*gateway, "cutover", "set", "--backend", "prefect-main", "--new-engine", "celery", "--stage", "shadow",
         "--reason", "from cli", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] is True
    with api.client(ADMIN) as admin:
        (event,) = [e for e in admin.get("/api/admin/cutover/history").json() if e["reason"] == "from cli"]
    assert event["actor"].startswith("cli:") and event["to_stage"] == "shadow"
    status = subprocess.run([*gateway, "cutover", "status", "--json"], env=env, capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    assert {m["stage"] for m in json.loads(status.stdout)} >= {"shadow"}


def test_scorecard_api_and_page(api: GatewayServer) -> None:
    with api.client(ADMIN) as admin:
        admin.post("/api/admin/cutover/content/cc-main/set", json={"new_engine": "prefect", "stage": "shadow"})
        cards = admin.get("/api/cutover/scorecard").json()
        card = next(c for c in cards if c["label"] == "week1.ex1")
        assert (card["stage"], card["samples"], card["evaluation"]["verdict"]) == ("shadow", 0, "Inconclusive")
        assert card["needs"][0] == "100 more comparisons"
        page = admin.get("/scorecard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'data-scope-id="cc-main"' in page.text and "100 more comparisons" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
        form = {"content-type": "application/x-www-form-urlencoded"}
        back = admin.post(
            "/scorecard/content/cc-main/rollback", content=b"reason=from+the+page", headers=form, follow_redirects=False
        )
        assert back.status_code == 303
        (event, *_rest) = admin.get("/api/admin/cutover/content/cc-main/history").json()
        assert (event["action"], event["to_stage"], event["reason"]) == ("rollback", "old_only", "from the page")
    with api.client(ALICE) as alice:
        assert alice.get("/scorecard").status_code == 403
        assert alice.get("/api/cutover/scorecard").status_code == 403
