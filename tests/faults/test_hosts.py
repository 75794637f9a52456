"""Beyond one machine: the API and its reconciler on one host, a Celery worker on another (issue 24).

The second host is a network namespace joined by a veth pair (tests/support/netns.py, made here and removed
after). Redis and PostgreSQL listen on the first host's end of the link, so the worker reaches them across it, as
a worker on another machine does. Cutting the link mid-job makes that worker silent: the gateway declares it gone
(`CELERY_WORKER_LOST_SECONDS`, 5 s in the fault suite) and runs the leg again on the first host's worker; the link
is restored, and every accepted job has completed once with its right grade.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import service_missing
from tests.faults.stack import DIRECTORY, SLOW, FaultStack, Tally, fault_stack
from tests.support import netns
from tests.support.pg_cluster import pg_cluster, postgres_bin
from tests.support.redis_server import redis_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def worker_host() -> Iterator[netns.Host]:
    why = netns.unavailable()
    if why is not None:
        service_missing(f"no network namespaces here: {why}")
    with netns.host(seed=24) as made:
        yield made


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, worker_host: netns.Host) -> Iterator[FaultStack]:
    if postgres_bin() is None:
        service_missing("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (initdb, pg_ctl)")
    tmp = tmp_path_factory.mktemp("hosts")
    both = f"127.0.0.1 {worker_host.peer}"
    with (
        redis_server(tmp / "redis", persistent=True, bind=both) as broker,
        pg_cluster(tmp / "postgres.log", listen=both.replace(" ", ",")) as pg,
        fault_stack(tmp, pg, broker.env(), 8, celery_worker=False) as stack,
    ):
        yield stack


def running_on(admin: httpx.Client, leg: str) -> str | None:
    info = admin.get(f"/api/tasks/{leg}/status").json()
    return info["worker"] if info["status"] == "started" and info["worker"] else None


def test_a_worker_host_cut_off_mid_job_loses_nothing(stack: FaultStack, worker_host: netns.Host) -> None:
    across = {"REDIS_HOST": worker_host.peer, "POSTGRES_HOST": worker_host.peer}
    remote = stack.start_worker(across, log_dir=stack.log_dir / "remote", prefix=worker_host.prefix())
    tally = Tally()
    with stack.client(SLOW) as slow, stack.client() as admin:
        tally.record(slow.post("/api/tests", json={"directory": DIRECTORY, "version_identifier": stack.slow_commit}))
        ((result_id, leg),) = tally.accepted.items()
        assert wait_until(lambda: running_on(admin, leg), f"{leg} running", timeout=120) == remote.hostname
        stack.start_worker()  # the first host's own worker, to take the job over
        worker_host.cut()
        cut = time.monotonic()
        try:
            wait_until(lambda: stack.executions(leg) >= 2, f"{leg} run again on the first host", timeout=180)
            rerun = time.monotonic() - cut
        finally:
            worker_host.restore()
        outcome = tally.outcome(stack, admin, timeout=240)
        done = time.monotonic() - cut
        row = admin.get(f"/api/results/{result_id}").json()
    print(f"worker host cut off: re-run {rerun:.1f} s after the cut, completed {done:.1f} s after it; {outcome}")
    assert outcome["other_answers"] == [] and outcome["lost"] == 0, outcome
    assert (row["status"], row["result"]) == (0, 1.0), row
