"""`/docs` (Swagger UI) renders with no internet: its script and styles come from this server. (No `/redoc`: its
page fetches a logo from a CDN even with its script served locally.)

FastAPI's default pages load Swagger UI from a CDN, so offline they are blank. Chromium runs here with every
host name but 127.0.0.1 unresolvable (`--host-resolver-rules`), which is what a machine without a network sees;
the test records every request the page makes and checks none left the gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.api.app import DOCS_ASSETS
from tests.service.server import GatewayServer, running_server, wait_for
from tests.service.test_scorecard_browser import TIMEOUT, DevTools, running_chromium
from tests.support.celery_worker import settings_from_env

OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GatewayServer]:
    data = tmp_path / "gw"
    settings_from_env({"GATEWAY_DATA_DIR": str(data)})
    with running_server({}, data) as found:
        yield found


def _requests(devtools: DevTools) -> list[str]:
    urls = [e["params"]["request"]["url"] for e in devtools.events if e.get("method") == "Network.requestWillBeSent"]
    return [u for u in urls if not u.startswith(("data:", "blob:"))]


def test_swagger_ui_renders_offline(tmp_path: Path, server: GatewayServer) -> None:
    # The API's title and its operations, drawn by the bundle's script (a blank page without it).
    rendered = (
        "document.querySelectorAll('.swagger-ui .opblock').length > 0 && "
        "document.querySelector('.swagger-ui .info .title').innerText"
    )
    with running_chromium(tmp_path / "profile", OFFLINE) as chromium:
        chromium.call("Network.enable")
        chromium.call("Page.enable")
        chromium.call("Page.navigate", url=f"{server.url}/docs")
        title = wait_for(lambda: chromium.evaluate(rendered), TIMEOUT, what="/docs to render")
        assert title.startswith("ctutor gateway"), title
        chromium.evaluate("0")  # collect the events that arrived meanwhile
        urls = _requests(chromium)
    assert any(u.startswith(f"{server.url}{DOCS_ASSETS}/") for u in urls), urls
    assert all(u.startswith(server.url) for u in urls), [u for u in urls if not u.startswith(server.url)]


def test_redoc_is_not_served(server: GatewayServer) -> None:
    with server.client() as client:
        assert client.get("/redoc").status_code == 404
