"""The operator console in a real headless Chromium (DevTools protocol, as test_scorecard_browser.py drives it):
log in, walk a migration one step, drill from a cluster into a comparison, accept its cluster with a scope and an
expiry, roll back and see the students that move and the jobs in flight; a cross-site POST is refused; a stale
page's action shows the 409. Skips (fails under CI=true) without chromium.

Set `CONSOLE_SCREENSHOTS=docs/console` to keep one screenshot per page kind (the ones in docs/ came from here).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from gateway.compare.step import routed_by_record
from gateway.cutover.triage import signature_of
from gateway.store.catalog import load_catalog
from gateway.store.db import make_sync_engine
from gateway.store.models import Comparison, Leg, Result, new_id, utcnow
from tests.fast.conftest import catalog
from tests.service.conftest import PASSWORD
from tests.service.server import GatewayServer, running_server
from tests.service.test_cutover_api import ADMIN
from tests.service.test_scorecard_browser import DevTools, running_chromium
from tests.support.celery_worker import settings_from_env

STUDENTS = [f"m-s{i:02d}" for i in range(24)]
ENVIRONMENT = {"python": "3.11.2", "pytest": "8.3.4", "limits": {"time_seconds": 60, "memory_mb": 1024}}
IN_FLIGHT = 2  # unfinished Celery legs: a rollback leaves them where they are
DIFF = [{"path": '$.tests["test_calc.py"].tests["test_div"].result', "primary": "PASSED", "shadow": "FAILED",
         "test": "test_calc.py::test_div"}]  # fmt: skip


def _report(div: str) -> dict[str, Any]:
    tests = [{"name": "test_add", "status": "PASSED", "result": "PASSED"},
             {"name": "test_div", "status": div, "result": div}]  # fmt: skip
    passed = sum(t["status"] == "PASSED" for t in tests)
    return {"tests": [{"name": "test_calc.py", "tests": tests}],
            "summary": {"total": 2, "passed": passed, "failed": 2 - passed}}  # fmt: skip


def _leg(result_id: str, role: str, engine: str, routing: dict[str, Any], report: dict[str, Any] | None,
         at: Any, finished: bool = True) -> Leg:  # fmt: skip
    return Leg(id=new_id(), result_id=result_id, role=role, engine=engine, task_name="run_tests", spec={},
               phase="succeeded" if finished else "queued", finished=finished,
               outcome="succeeded" if finished else None, payload=report, routing=routing, created_at=at,
               dispatched_at=at, started_at=at + timedelta(seconds=2) if finished else None,
               finished_at=at + timedelta(seconds=6 if engine == "prefect" else 5) if finished else None)  # fmt: skip


def _evidence(settings: Any) -> str:
    """Jobs of 24 students in shadow (Prefect answers, Celery shadows): legs with reports, comparisons (three
    mismatches on test_div, one A/A pair showing the same), and two Celery legs still in flight."""
    signature = signature_of("mismatch", DIFF)
    routing = {"stage": "shadow", "percentage": 0.0, "config_scope": "content", "config_version": 1}
    now = utcnow()
    with Session(make_sync_engine(settings)) as db, db.begin():
        for i, member in enumerate(STUDENTS):
            at = now - timedelta(minutes=90 - 3 * i)
            rid = new_id()
            commit = f"{i:02d}c0ffee{i:032d}"
            db.add(Result(id=rid, course_member_id=member, course_content_id="cc-prefect", test_system_id=f"t-{i}",
                          version_identifier=commit, status=0, result=1.0, created_at=at))  # fmt: skip
            db.flush()
            mismatch = i % 8 == 5
            primary = _leg(rid, "primary", "prefect", routing, _report("PASSED"), at)
            shadow = _leg(rid, "shadow", "celery", routing, _report("FAILED" if mismatch else "PASSED"), at)
            db.add_all([primary, shadow])
            db.flush()
            db.add(Comparison(
                id=new_id(), result_id=rid, primary_leg_id=primary.id, shadow_leg_id=shadow.id, kind="shadow",
                course_content_id="cc-prefect", primary_engine="prefect", shadow_engine="celery",
                outcome="mismatch" if mismatch else "match", differences=DIFF if mismatch else None,
                difference_count=1 if mismatch else 0, signature=signature if mismatch else None,
                primary_score=1.0, shadow_score=0.5 if mismatch else 1.0, primary_run_seconds=4.0,
                shadow_run_seconds=3.0, primary_queue_seconds=2.0, shadow_queue_seconds=2.0,
                created_at=at + timedelta(seconds=10) + timedelta(hours=2),
                environment={"primary": ENVIRONMENT, "shadow": ENVIRONMENT, "differences": []},
                **routed_by_record(routing),  # this stage's evidence, as the compare step records it
            ))  # fmt: skip
            if i < IN_FLIGHT:
                db.add(_leg(rid, "shadow", "celery", routing, None, now, finished=False))
        db.add(Comparison(id=new_id(), result_id=rid, primary_leg_id=new_id(), shadow_leg_id=new_id(), kind="aa",
                          course_content_id="cc-prefect", primary_engine="prefect", shadow_engine="prefect",
                          outcome="mismatch", differences=DIFF, signature=signature, created_at=now))  # fmt: skip
    return signature


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[GatewayServer, str]]:
    data = tmp_path / "gw"
    settings = settings_from_env({"GATEWAY_DATA_DIR": str(data)})
    seeded = catalog()
    seeded["course_members"] += [{"id": m, "user_id": f"u-{m}", "repository_url": "file:///x"} for m in STUDENTS]
    load_catalog(seeded, settings)
    with running_server({}, data) as server:
        with server.client(ADMIN) as admin:
            done = admin.post("/api/admin/cutover/content/week2.ex1/set",
                              json={"new_engine": "celery", "stage": "shadow", "canary_steps": [50, 100],
                                    "min_stage_seconds": 0})  # fmt: skip
            assert done.status_code == 200, done.text
        yield server, _evidence(settings)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    with running_chromium(tmp_path / "profile") as devtools:
        token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        devtools.call("Page.enable")
        devtools.call("Network.enable")
        # The browser's cached Basic login: sent with every request, a cross-site page's too.
        devtools.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
        yield devtools


def _go(devtools: DevTools, url: str) -> None:
    devtools.events.clear()
    devtools.call("Page.navigate", url=url)
    devtools.event("Page.loadEventFired")


def _click(devtools: DevTools, selector: str) -> None:
    """Click and wait for the page it leads to (a link, or a form's POST and its redirect)."""
    devtools.events.clear()
    found = devtools.evaluate(
        f"(() => {{ const e = document.querySelector({selector!r}); if (e) e.click(); return !!e }})()"
    )
    assert found, f"nothing matches {selector}"
    devtools.event("Page.loadEventFired")


def _text(devtools: DevTools, selector: str = "body") -> str:
    return devtools.evaluate(f"document.querySelector({selector!r}).innerText") or ""


def _shot(devtools: DevTools, name: str, width: int = 1400) -> None:
    if target := os.environ.get("CONSOLE_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        height = devtools.evaluate("document.documentElement.scrollHeight")
        devtools.call("Emulation.setDeviceMetricsOverride", width=width, height=min(int(height), 2400),
                      deviceScaleFactor=1, mobile=width < 700)  # fmt: skip
        shot = devtools.call("Page.captureScreenshot", format="png")["data"]
        Path(target, f"{name}.png").write_bytes(base64.b64decode(shot))
        devtools.call("Emulation.clearDeviceMetricsOverride")


def test_walk_drill_accept_and_roll_back(chromium: DevTools, console: tuple[GatewayServer, str]) -> None:
    api, signature = console
    with api.client(ADMIN) as admin:  # the gate evaluates once (manual policy: it decides, it does not move)
        assert admin.post("/api/admin/cutover/content/week2.ex1/evaluate").status_code == 200
    _go(chromium, f"{api.url}/scorecard")  # the old URL lands on the console
    assert chromium.evaluate("location.pathname") == "/console"
    assert chromium.evaluate("[...document.querySelectorAll('#migrations tr')].map(r => r.dataset.key)") == [
        "week2.ex1"
    ]
    _shot(chromium, "migrations")

    _click(chromium, "#migrations a")
    assert _text(chromium, "#stage") == "shadow"
    assert _text(chromium, "#next-target") == "canary 50 %"
    traffic = _text(chromium, "#traffic")
    assert re.search(r"shadow\s+prefect\s+24\s+24", traffic), traffic  # 24 jobs of 24 students answered by Prefect
    assert chromium.evaluate("document.querySelector('#traffic tr[data-engine=celery] .in-flight').innerText") == "2"
    offered = chromium.evaluate("[...document.querySelectorAll('#actions a')].map(a => a.dataset.action)")
    assert offered == ["promote", "demote", "rollback", "pause"]
    clusters = _text(chromium, "#clusters")
    assert "test_calc.py::test_div" in clusters and "1 of 1 A/A pairs" in clusters
    assert _text(chromium, "#environment") == "same"  # environment parity: nothing differs
    evaluation = _text(chromium, "#timeline tr.evaluation")  # the evaluation with its numbers and confidence
    assert "Inconclusive on samples" in evaluation and "mismatch: 12.5 % (95 %: 4.3–31 %)" in evaluation
    assert "http://" not in chromium.evaluate("document.documentElement.outerHTML")  # nothing from elsewhere
    _shot(chromium, "migration")
    # Readable on a narrow screen: nothing wider than the viewport (wide tables scroll inside their box).
    chromium.call("Emulation.setDeviceMetricsOverride", width=400, height=800, deviceScaleFactor=1, mobile=True)
    _go(chromium, chromium.evaluate("location.href"))
    assert chromium.evaluate("document.documentElement.scrollWidth") <= 400
    _shot(chromium, "migration-narrow", width=400)
    chromium.call("Emulation.clearDeviceMetricsOverride")
    _go(chromium, chromium.evaluate("location.href"))

    # Drill from the cluster into a comparison: both reports side by side, the difference highlighted.
    _click(chromium, f"#clusters tr[data-signature='{signature}'] a.button")
    kinds = chromium.evaluate("[...document.querySelectorAll('#cluster tr[data-comparison]')].map(r => r.dataset.kind)")
    assert sorted(kinds) == ["aa", "shadow", "shadow", "shadow"]  # the A/A pair with the same signature, beside
    _shot(chromium, "cluster")
    _click(chromium, "#cluster tr[data-kind=shadow] a")
    assert chromium.evaluate("document.querySelector('#comparison').dataset.outcome") == "mismatch"
    assert chromium.evaluate("[...document.querySelectorAll('#tests tr.differs')].map(r => r.dataset.test)") == [
        "test_calc.py::test_div"
    ]
    assert "PASSED" in _text(chromium, "#differences") and "FAILED" in _text(chromium, "#differences")
    assert "time limit\t60\t60" in _text(chromium, "#environment")  # both legs' environments, field by field
    _shot(chromium, "comparison")

    # Accept this cluster only, in this migration only, for three days.
    _click(chromium, "a[data-action=accept]")
    assert re.fullmatch(r"accept cluster \w+ of week2\.ex1: 3 mismatches stop counting against the gate",
                        _text(chromium, "#summary"))  # fmt: skip
    chromium.evaluate("document.querySelector('input[name=note]').value = 'flaky division test, fixed in #12'")
    chromium.evaluate("document.querySelector('select[name=expires_in_hours]').value = '72'")
    _click(chromium, "#confirm")
    assert chromium.evaluate("location.search") == "?done=accept"
    row = _text(chromium, f"#clusters tr[data-signature='{signature}']")
    assert "accepted" in row and "flaky division test" in row
    with api.client(ADMIN) as admin:
        (acceptance,) = admin.get("/api/admin/cutover/content/week2.ex1/acceptances").json()
        expires = acceptance["expires_at"]
    assert (acceptance["signature"], acceptance["active"]) == (signature, True)
    assert timedelta(hours=71) < _until(expires) <= timedelta(hours=72)

    # Walk one step: the confirmation names what changes; the form carries the version.
    _click(chromium, "#actions a[data-action=promote]")
    summary = _text(chromium, "#summary")
    moving = re.fullmatch(r"promote to canary 50 %: (\d+) students move to Celery", summary)
    assert moving and 0 < int(moving[1]) < len(STUDENTS), summary
    _shot(chromium, "confirm")
    _click(chromium, "#confirm")
    assert chromium.evaluate("location.search") == "?done=promote"
    assert _text(chromium, "#stage") == "canary 50 %"

    # Roll back: the students that move back and the jobs in flight that stay.
    _click(chromium, "#actions a[data-action=rollback]")
    summary = _text(chromium, "#summary")
    back = re.fullmatch(r"rollback to old_only: (\d+) students move back to Prefect", summary)
    assert back and back[1] == moving[1], summary
    assert f"jobs in flight stay on the engine that took them: {IN_FLIGHT} on celery" in _text(chromium, "#preview")
    _click(chromium, "#confirm")
    assert _text(chromium, "#stage") == "old_only"
    offered = chromium.evaluate("[...document.querySelectorAll('#actions a')].map(a => a.dataset.action)")
    assert offered == ["promote", "resume"]  # no Roll back or Demote at old_only; the rollback paused automation
    assert "The gate will not promote until resumed" in _text(chromium, "#paused")
    timeline = chromium.evaluate(
        "[...document.querySelectorAll('#timeline tr[data-action]')].map(r => r.dataset.action)"
    )
    assert timeline[:3] == ["rollback", "promote", "accept"]

    _go(chromium, f"{api.url}/console/jobs?outcome=mismatch")
    assert chromium.evaluate("document.querySelectorAll('#jobs tr[data-result]').length") == 3
    _shot(chromium, "jobs")


def _until(iso: str) -> timedelta:
    from datetime import datetime

    return datetime.fromisoformat(iso) - utcnow()


def test_a_stale_page_shows_the_409(chromium: DevTools, console: tuple[GatewayServer, str]) -> None:
    api, _signature = console
    _go(chromium, f"{api.url}/console/m/content/week2.ex1/confirm/promote")
    version = chromium.evaluate("document.querySelector('input[name=version]').value")
    with api.client(ADMIN) as admin:  # another operator moves the migration meanwhile
        assert admin.post("/api/admin/cutover/content/week2.ex1/promote", json={}).status_code == 200
    _click(chromium, "#confirm")
    assert chromium.evaluate("document.querySelector('#error').dataset.status") == "409"
    assert f"not {version}" in _text(chromium, "#error")
    _shot(chromium, "stale")
    with api.client(ADMIN) as admin:
        assert admin.get("/api/admin/cutover/content/week2.ex1").json()["stage"] == "canary"  # promoted once only


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def test_a_cross_site_post_is_refused(chromium: DevTools, console: tuple[GatewayServer, str], tmp_path: Path) -> None:
    """Another site's page posts the rollback form, with the login's valid token even: refused, nothing changes."""
    api, _signature = console
    _go(chromium, f"{api.url}/console/m/content/week2.ex1/confirm/rollback")
    token = chromium.evaluate("document.querySelector('input[name=csrf]').value")
    site = tmp_path / "evil"
    site.mkdir()
    (site / "index.html").write_text(
        f'<form method="post" action="{api.url}/console/m/content/week2.ex1/rollback">'
        f'<input name="csrf" value="{token}"><input name="version" value="1"><button id="go">win</button></form>'
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _go(chromium, f"http://127.0.0.1:{server.server_address[1]}/index.html")
        _click(chromium, "#go")
        assert chromium.evaluate("document.querySelector('#error').dataset.status") == "403"
        assert "cross-site" in _text(chromium, "#error")
    finally:
        server.shutdown()
        thread.join(timeout=10)
    with api.client(ADMIN) as admin:
        assert admin.get("/api/admin/cutover/content/week2.ex1").json()["stage"] == "shadow"
        # Without the token, from the console's own origin: refused too.
        forged = admin.post("/console/m/content/week2.ex1/rollback", data={"version": "1"},
                            headers={"Origin": api.url})  # fmt: skip
        assert forged.status_code == 403 and "token" in forged.text
        token_only = admin.post("/console/m/content/week2.ex1/rollback", data={"csrf": token},
                                headers={"Origin": api.url})  # fmt: skip
        assert token_only.status_code == 422 and "no version" in token_only.text  # the stale check cannot be skipped
        assert admin.get("/api/admin/cutover/content/week2.ex1").json()["stage"] == "shadow"


def test_one_parity_in_the_console_the_api_and_the_cli(console: tuple[GatewayServer, str]) -> None:
    """The same scope's parity is one number in the console, `GET /api/cutover/scorecard`, `gateway cutover
    status` and `gateway compare summary`; the CLI names the content (never its id) and, piped, folds no row."""
    api, _signature = console
    gateway = [str(Path(sys.executable).with_name("gateway"))]
    env = {k: v for k, v in api.env.items() if k != "COLUMNS"}

    def cli(*args: str) -> str:
        done = subprocess.run([*gateway, *args], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    with api.client(ADMIN) as admin:
        (card,) = admin.get("/api/cutover/scorecard").json()
        page = admin.get("/console/m/content/week2.ex1").text
        api_summary = admin.get("/api/comparisons/summary", params={"group_by": "content"}).json()
    (cli_card,) = json.loads(cli("cutover", "status", "--json"))
    (group,) = json.loads(cli("compare", "summary", "--by", "content", "--json"))
    assert card["parity"] == cli_card["parity"] == group["gate"]["parity"] == api_summary[0]["gate"]["parity"] == 0.875
    assert re.search(r'id="parity">87\.5 %<', page)
    assert group["label"] == "week2.ex1"

    table = cli("cutover", "status")  # piped: no terminal, no COLUMNS
    (row,) = [line for line in table.splitlines() if "Inconclusive" in line]
    assert "week2.ex1" in row and "87.5" in row and "more comparisons" in row, table  # one line, not folded
    assert "cc-prefect" not in table
    history = cli("cutover", "history", "--content", "week2.ex1")
    assert "content week2.ex1" in history and "cc-prefect" not in history
    summary = cli("compare", "summary", "--by", "content")
    (row,) = [line for line in summary.splitlines() if "week2.ex1" in line]
    assert "87.5% (shadow, 24)" in row
    for args in (["shadow", "show"], ["compare", "list"], ["cutover", "evaluate", "--dry-run"], ["cutover", "history"]):
        json.loads(cli(*args, "--json"))
