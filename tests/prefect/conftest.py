"""One real Prefect server and one real runner for the whole tests/prefect session (a server start is expensive).

- `prefect_api`: the API URL of a `prefect server start` on SQLite in a temp folder.
- `prefect_env`: the environment every Prefect process of the session uses (API URL, home, data folder).
- `prefect_runner`: `gateway prefect serve --test-flows` serving the shipped and the test deployments.
- `prefect_settings` / `adapter`: the gateway's view, pointed at the same server and data folder.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.prefect.adapter import PrefectAdapter
from common.settings import Settings
from tests.support.prefect_server import prefect_process_env, running_prefect_server, running_runner

TEST_DEPLOYMENTS = (
    "test-assignment/system",
    "submit-result/system",
    "gateway-noop/system",
    "gateway-test-wait/system",
    "gateway-test-fail/system",
    "gateway-test-unpersisted/system",
)


@pytest.fixture(scope="session")
def prefect_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect")


@pytest.fixture(scope="session")
def prefect_api(prefect_root: Path) -> Iterator[str]:
    with running_prefect_server(prefect_root / "server") as api_url:
        yield api_url


@pytest.fixture(scope="session")
def prefect_data_dir(prefect_root: Path) -> Path:
    path = prefect_root / "gateway-data"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def prefect_env(prefect_api: str, prefect_root: Path, prefect_data_dir: Path) -> dict[str, str]:
    home = prefect_root / "client-home"
    home.mkdir(exist_ok=True)
    return prefect_process_env(prefect_api, home, {"GATEWAY_DATA_DIR": str(prefect_data_dir)})


@pytest.fixture(scope="session")
def prefect_runner(prefect_env: dict[str, str], prefect_root: Path) -> Iterator[subprocess.Popen[bytes]]:
    with running_runner(
        prefect_env, limit=4, test_flows=True, wait_for=TEST_DEPLOYMENTS, log_path=prefect_root / "runner.log"
    ) as proc:
        yield proc


@pytest.fixture(scope="session")
def prefect_settings(prefect_api: str, prefect_data_dir: Path) -> Settings:
    return Settings(prefect_api_url=prefect_api, gateway_data_dir=prefect_data_dir)


@pytest.fixture
def adapter(prefect_settings: Settings) -> Iterator[PrefectAdapter]:
    adapter = PrefectAdapter(prefect_settings)
    yield adapter
    adapter.close()
