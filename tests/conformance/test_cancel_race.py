"""A cancel racing a legacy client's status polls ends CANCELLED, on a real Celery worker and on both stores.

The field report (issue 16): on the embedded default (SQLite), after `DELETE /api/tasks/{id}/cancel` answered
`cancelled`, the row stayed CANCELLING (8) for ever while the client kept polling: a status read polled the
engine (a revoke reads CANCELLING until the worker stored REVOKED) and wrote what it had loaded before the
cancel's commit over it. Here readers hammer both status paths of a running job while it is cancelled, round
after round; every row must reach CANCELLED (a row stuck at 8 fails the bounded wait). The interleavings are
forced deterministically in `tests/fast/test_cancel_race.py`; this is the same behaviour end to end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from legacy_stack import ADMIN, DIRS, FINAL, SLOW, Stack, build_repos, catalog, wait_until

from gateway.store.catalog import load_catalog
from tests.service.server import GatewayServer, running_server
from tests.support.celery_worker import base_env, running_worker, settings_from_env

pytestmark = [pytest.mark.slow]

ROUNDS = 4
READERS = 4


@pytest.fixture(scope="module")
def embedded_celery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayServer, str]]:
    """The embedded default: SQLite store, filesystem broker, one Celery worker; the slow student's commit."""
    data = tmp_path_factory.mktemp("race-embedded")
    repos = build_repos(data / "repos")
    load_catalog(catalog(repos), settings_from_env({"GATEWAY_DATA_DIR": str(data)}))
    with running_worker(base_env({}, data), concurrency=2), running_server({}, data) as server:
        yield server, repos.commit("slow")


class Reads:
    """How many status reads the readers made so far (the main thread waits on it, never on time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.count += n


def read_until(stop: threading.Event, server: GatewayServer, run: dict[str, Any], reads: Reads) -> None:
    """A legacy client's two status paths, as fast as they answer, until told to stop."""
    with server.client(SLOW) as client:
        while not stop.is_set():
            assert client.get(f"/api/results/{run['id']}/status").status_code == 200
            assert client.get(f"/api/system/status/{run['test_system_id']}").status_code == 200
            reads.add(2)


def race_one_round(server: GatewayServer, commit: str, pool: ThreadPoolExecutor, round_no: int) -> None:
    """Submit, wait until RUNNING, cancel while READERS poll both status paths; the row must end CANCELLED."""
    with server.client(SLOW) as slow, server.client(ADMIN) as admin:
        resp = slow.post("/api/tests", json={"directory": DIRS["celery"], "version_identifier": commit})
        assert resp.status_code == 200, resp.text
        run = resp.json()
        assert run["status"] == 3, f"round {round_no}: a new run (the previous one was cancelled): {run}"
        status_path = f"/api/results/{run['id']}/status"
        wait_until(lambda: slow.get(status_path).json() == 5 or None, "running", timeout=120, interval=0.05)
        stop, reads = threading.Event(), Reads()
        readers = [pool.submit(read_until, stop, server, run, reads) for _ in range(READERS)]
        try:
            # The readers are polling when the cancel arrives, and go on well after it answered.
            wait_until(lambda: reads.count >= 4 * READERS or None, "readers polling", timeout=60, interval=0.01)
            cancel = admin.delete(f"/api/tasks/{run['test_system_id']}/cancel")
            assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled", cancel.text
            after = reads.count
            wait_until(lambda: reads.count >= after + 40 or None, "reads after the cancel", timeout=60, interval=0.01)
        finally:
            stop.set()
            for reader in readers:
                reader.result(timeout=60)
        final = wait_until(lambda: (s := slow.get(status_path).json()) in FINAL and (s,), "final", timeout=60)[0]
        assert final == 2, f"round {round_no}: status {final} after the cancel"
        # Still CANCELLED after the readers are gone and the worker has had its say.
        assert slow.get(f"/api/system/status/{run['test_system_id']}").json() == {"status": "CANCELLED"}


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_cancel_racing_status_polls_always_ends_cancelled(store: str, request: pytest.FixtureRequest) -> None:
    if store == "sqlite":
        server, commit = request.getfixturevalue("embedded_celery")
    else:
        stack: Stack = request.getfixturevalue("celery_stack")
        server, commit = stack.server, stack.repos.commit("slow")
    with ThreadPoolExecutor(READERS) as pool:
        for round_no in range(ROUNDS):
            race_one_round(server, commit, pool, round_no)
