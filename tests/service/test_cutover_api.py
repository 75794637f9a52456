"""The cutover's admin API and CLI against a real uvicorn process (SQLite store): changes, dry runs, history,
the routing record of a job, accepting a mismatch cluster, and the student's 403."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from gateway.cutover.triage import signature_of
from gateway.store.catalog import load_catalog
from tests.fast.conftest import catalog
from tests.service.conftest import PASSWORD
from tests.service.server import GatewayServer, running_server
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
        assert refused.status_code == 422 and "last stage" in refused.json()["detail"][0]["msg"]
        assert admin.post("/api/admin/cutover/content/nothing/promote", json={}).status_code == 404
        assert admin.post("/api/admin/cutover/content/week2.ex1/set", json={"bogus": 1}).status_code == 422
        bogus = admin.post("/api/admin/cutover/content/week2.ex1/set", json={"stage": "bogus"})
        assert bogus.status_code == 422, bogus.text  # not a 500: the allowed stages are named
        assert all(stage in bogus.json()["detail"][0]["msg"] for stage in ("old_only", "canary", "new_only"))
        assert admin.post("/api/admin/cutover/content/week2.ex1/history").status_code == 405
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
    for action, stage in (("promote", "canary"), ("demote", "shadow")):  # both built by one command factory
        step = subprocess.run([*gateway, "cutover", action, "--backend", "prefect-main", "--reason", action, "--json"],
                              env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert step.returncode == 0, step.stderr
        assert json.loads(step.stdout)["after"]["stage"] == stage
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
        page = admin.get("/scorecard", follow_redirects=True)  # the old URL lands on the console
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert str(page.url).endswith("/console")
        assert 'data-key="week1.ex1"' in page.text and "100 more comparisons" in page.text
        assert "mismatch — (no samples)" in page.text  # every rate with its interval (none yet)
        assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
        # The old page's form (no token, no version, no confirmation) is gone; the console's refuses without both.
        form = {"content-type": "application/x-www-form-urlencoded"}
        old = admin.post("/scorecard/content/cc-main/rollback", content=b"reason=x", headers=form)
        assert old.status_code in (404, 405)
        bare = admin.post("/console/m/content/week1.ex1/rollback", content=b"reason=x", headers=form)
        assert bare.status_code == 403 and "cross-site" in bare.text
        assert admin.get("/api/admin/cutover/content/cc-main").json()["stage"] == "shadow"
    with api.client(ALICE) as alice:
        assert alice.get("/scorecard").status_code == 403
        assert alice.get("/api/cutover/scorecard").status_code == 403


def _mismatches(api: GatewayServer, result_id: str, differences: list[dict[str, Any]], count: int) -> str:
    """Mismatch comparisons of cc-prefect (Prefect primary, Celery shadow) as the compare step writes them."""
    from sqlalchemy import select

    from gateway.compare.step import routed_by_record
    from gateway.store.db import make_sync_engine
    from gateway.store.models import Comparison, Leg, new_id, utcnow

    signature = signature_of("mismatch", differences)
    engine = make_sync_engine(settings_from_env(api.env))
    try:
        with Session(engine) as session, session.begin():
            # The job's own primary leg: its routing record makes the comparisons this stage's evidence.
            leg = session.scalar(select(Leg).where(Leg.result_id == result_id, Leg.role == "primary"))
            assert leg is not None
            primary, routed = leg.id, routed_by_record(leg.routing)
            for _ in range(count):
                session.add(
                    Comparison(
                        id=new_id(), result_id=result_id, primary_leg_id=primary, shadow_leg_id=new_id(),
                        kind="shadow", course_content_id="cc-prefect", primary_engine="prefect",
                        shadow_engine="celery", outcome="mismatch", differences=differences,
                        difference_count=len(differences), signature=signature, primary_run_seconds=1.0,
                        shadow_run_seconds=1.0, created_at=utcnow(), **routed,
                    )
                )  # fmt: skip
    finally:
        engine.dispose()
    return signature


def test_accepting_a_cluster_through_the_api_and_the_cli(api: GatewayServer) -> None:
    diff = [{"path": '$.tests["t.py"].tests["test_add"].result', "primary": "PASSED", "shadow": "FAILED",
             "test": "t.py::test_add"}]  # fmt: skip
    base = "/api/admin/cutover/content/week2.ex1"
    with api.client(ADMIN) as admin:
        setup = admin.post(f"{base}/set", json={"new_engine": "celery", "stage": "shadow", "reason": "triage"})
        assert setup.status_code == 200, setup.text
        run = admin.post("/api/tests", json={"directory": "week2/ex1", "course_member_id": "m-alice",
                                             "version_identifier": "triage1"})  # fmt: skip
        assert run.status_code == 200, run.text
        signature = _mismatches(api, run.json()["id"], diff, 3)

        def card() -> dict[str, Any]:
            return next(c for c in admin.get("/api/cutover/scorecard").json() if c["label"] == "week2.ex1")

        assert [(c["signature"], c["status"], c["count"]) for c in card()["clusters"]] == [(signature, "open", 3)]
        url = f"{base}/clusters/{signature}/acceptance"
        for bad, status in [({}, 422), ({"note": "x", "expires_in": "P1D", "bogus": 1}, 422),
                            ({"note": "x", "expires_at": "2026-01-01T00:00:00"}, 422),  # no zone
                            ({"note": "x"}, 422)]:  # fmt: skip
            assert admin.put(url, json=bad).status_code == status, bad
        unknown = admin.put(f"{base}/clusters/0123456789abcdef/acceptance", json={"note": "x", "expires_in": "P1D"})
        assert unknown.status_code == 404
        done = admin.put(url, json={"note": "Celery reports ms", "expires_in": "P14D"})
        assert done.status_code == 200, done.text
        assert (done.json()["event"]["action"], done.json()["event"]["actor"]) == ("accept", "admin")

        after = card()
        assert after["clusters"] == [] and after["accepted_mismatches"] == 3
        (accepted,) = after["accepted_clusters"]
        assert (accepted["signature"], accepted["acceptance"]["note"]) == (signature, "Celery reports ms")
        (listed,) = admin.get(f"{base}/acceptances").json()
        assert (listed["signature"], listed["active"]) == (signature, True)
        page = admin.get("/console/m/content/week2.ex1").text
        assert f'data-signature="{signature}"' in page and "Celery reports ms" in page

        gateway = [str(Path(sys.executable).with_name("gateway"))]
        cli = subprocess.run([*gateway, "cutover", "unaccept", signature, "--content", "week2.ex1",
                              "--reason", "fixed", "--json"], env=api.env, capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert [c["status"] for c in card()["clusters"]] == ["open"]
        cli = subprocess.run([*gateway, "cutover", "accept", signature, "--content", "week2.ex1", "--note",
                              "again", "--expires", "P1D"], env=api.env, capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
        assert cli.returncode == 0 and signature in cli.stdout, cli.stderr
        wide = {**api.env, "COLUMNS": "400"}  # Rich fits its tables to the terminal: give it room for the row
        status = subprocess.run([*gateway, "cutover", "status"], env=wide, capture_output=True, text=True,
                                timeout=60, check=True)  # fmt: skip
        assert signature in status.stdout and "accepted" in status.stdout
        log = subprocess.run([*gateway, "cutover", "history", "--content", "week2.ex1"], env=wide,
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        assert f"cluster {signature} until" in log.stdout and "again" in log.stdout
        refused = subprocess.run([*gateway, "cutover", "accept", signature, "--content", "week2.ex1", "--note",
                                  "x", "--expires", "soon"], env=api.env, capture_output=True, text=True,
                                 timeout=60, check=False)  # fmt: skip
        assert refused.returncode != 0 and "--expires" in refused.stderr

        assert admin.delete(url, params={"reason": "done"}).status_code == 200
        assert admin.delete(url).status_code == 404
        history = admin.get(f"{base}/history").json()
        triage = [(e["action"], e["actor"], e["reason"]) for e in history if e["cluster"]]
        assert [(a, actor.split(":")[0], r) for a, actor, r in triage] == [
            ("unaccept", "admin", "done"), ("accept", "cli", "again"), ("unaccept", "cli", "fixed"),
            ("accept", "admin", "Celery reports ms"),
        ]  # fmt: skip
    with api.client(ALICE) as alice:
        assert alice.put(url, json={"note": "x", "expires_in": "P1D"}).status_code == 403
        assert alice.delete(url).status_code == 403
        assert alice.get(f"{base}/acceptances").status_code == 403
