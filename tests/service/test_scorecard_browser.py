"""The `/scorecard` URL in a real headless Chromium, driven over the DevTools protocol (the helpers here drive
the console's browser tests too). Skips (fails under CI=true) without chromium."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session
from websockets.sync.client import ClientConnection, connect

from gateway.store.catalog import load_catalog
from gateway.store.db import make_sync_engine
from gateway.store.models import Comparison, Result, new_id, utcnow
from tests.conftest import service_missing
from tests.fast.conftest import catalog
from tests.service.conftest import PASSWORD
from tests.service.server import GatewayServer, running_server, wait_for
from tests.service.test_cutover_api import ADMIN
from tests.support.celery_worker import settings_from_env

TIMEOUT = 30.0


class DevTools:
    """The few DevTools calls the test needs: commands by id, events collected while waiting."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> int:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        return call_id

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = self.send(method, **params)
        message = self._until(lambda m: m.get("id") == call_id)
        if "error" in message:
            raise AssertionError(f"{method}: {message['error']}")
        return message.get("result", {})

    def event(self, method: str) -> dict[str, Any]:
        for i, seen in enumerate(self.events):
            if seen.get("method") == method:
                return self.events.pop(i)["params"]
        return self._until(lambda m: m.get("method") == method)["params"]

    def _until(self, wanted: Any) -> dict[str, Any]:
        while True:
            message = json.loads(self.ws.recv(timeout=TIMEOUT))
            if wanted(message):
                return message
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


@contextlib.contextmanager
def running_chromium(profile: Path, *extra_args: str) -> Iterator[DevTools]:
    """A headless Chromium driven over DevTools; `extra_args` for its command line (e.g. no network)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        service_missing("chromium is not installed (./scripts/test.sh installs it when run as root)")
    process = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "--window-size=1400,700", *extra_args, "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), TIMEOUT, what="DevToolsActivePort")
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT).json()
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            yield DevTools(ws)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    with running_chromium(tmp_path / "profile") as devtools:
        yield devtools


@pytest.fixture
def api(tmp_path: Path) -> Iterator[GatewayServer]:
    data = tmp_path / "gw"
    settings = settings_from_env({"GATEWAY_DATA_DIR": str(data)})
    load_catalog(catalog(), settings)
    with running_server({}, data) as server:
        with server.client(ADMIN) as admin:
            done = admin.post("/api/admin/cutover/content/week2.ex1/set",
                              json={"new_engine": "celery", "stage": "canary", "percentage": 25})  # fmt: skip
            assert done.status_code == 200, done.text
        _evidence(settings)
        yield server


def _evidence(settings: Any) -> None:
    """Comparison rows as the compare step writes them, so the page has numbers, a chart and a cluster."""
    rng = random.Random(7)
    diff = [{"path": '$.tests["test_calc.py"].tests["test_div"].result', "primary": "PASSED", "shadow": "FAILED"}]
    with Session(make_sync_engine(settings)) as db, db.begin():
        db.add(Result(id="r-demo", course_member_id="m-alice", course_content_id="cc-prefect", test_system_id="t-demo",
                      version_identifier="demo", status=0, result=1.0))  # fmt: skip
        db.flush()
        now = utcnow()
        for i in range(60):  # 40 over the 13 hours before the canary began (the charts), 20 since (the gate)
            outcome = "mismatch" if i % 20 == 7 else ("noise" if i % 25 == 3 else "match")
            db.add(Comparison(
                id=new_id(), result_id="r-demo", primary_leg_id=new_id(), shadow_leg_id=new_id(), kind="shadow",
                course_content_id="cc-prefect", primary_engine="prefect", shadow_engine="celery", outcome=outcome,
                primary_run_seconds=rng.uniform(3, 8), shadow_run_seconds=rng.uniform(3, 8.5) + i / 30,
                created_at=now - timedelta(minutes=20 * (40 - i)) if i < 40 else now + timedelta(seconds=i),
                differences=diff if outcome == "mismatch" else None,
            ))  # fmt: skip


def _load(devtools: DevTools, url: str) -> None:
    devtools.call("Page.navigate", url=url)
    devtools.event("Page.loadEventFired")


def test_the_scorecard_url_lands_on_the_console(chromium: DevTools, api: GatewayServer) -> None:
    """`/scorecard` keeps working: it is the console's migrations list now (the console's own tests are in
    test_console_browser.py), with the migration's stage, parity and gate."""
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    chromium.call("Page.enable")
    chromium.call("Network.enable")
    chromium.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
    _load(chromium, f"{api.url}/scorecard")
    assert chromium.evaluate("location.pathname") == "/console"
    rows = chromium.evaluate("[...document.querySelectorAll('#migrations tr')].map(r => r.dataset.key)")
    assert rows == ["week2.ex1"]
    stage = chromium.evaluate("document.querySelector('#migrations tr .stage').innerText")
    assert stage.startswith("canary 25 %")
    assert "Inconclusive" in chromium.evaluate("document.body.innerText")  # 20 < 100 samples
