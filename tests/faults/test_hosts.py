"""Beyond one machine: the API and its reconciler on one host, a Celery worker on another (issue 24).

The second host is a network namespace joined by a veth pair (tests/support/netns.py, made here and removed
after). Redis and PostgreSQL listen on the first host's end of the link, so the worker reaches them across it, as
a worker on another machine does. Cutting the link mid-job makes that worker silent: the gateway declares it gone
(`CELERY_WORKER_LOST_SECONDS`, 5 s in the fault suite) and runs the leg again on the first host's worker; the link
is restored, and every accepted job has completed once with its right grade. The same for the PostgreSQL host:
while it is cut the API answers 503 with `Retry-After`, and a client that sends again afterwards loses nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RedisDB, service_missing
from tests.faults.stack import ALICE, DIRECTORY, SLOW, FaultStack, Tally, fault_stack
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


def test_the_postgresql_host_cut_off_answers_503_with_retry_after_and_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, redis_db: RedisDB
) -> None:
    """PostgreSQL on a second host; the API, its reconciler and a worker on the first. The link cut while jobs are
    accepted and running: every request that needs the store answers 503 with `Retry-After`; the client sends
    again after it; once the link is back every accepted job completes once with its grade."""
    if postgres_bin() is None:
        service_missing("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (initdb, pg_ctl)")
    tmp = tmp_path_factory.mktemp("db-host")
    with (
        netns.host(seed=25) as db_host,
        pg_cluster(tmp / "postgres.log", listen=db_host.address, netns=db_host.name) as pg,
        fault_stack(tmp, pg, redis_db.env(), 12) as stack,
    ):
        tally = Tally()
        commits = stack.next_commits(8)
        cut_done, restored = threading.Event(), threading.Event()

        def submitter() -> None:
            with stack.client(ALICE) as client:
                for number, commit in enumerate(commits):
                    if number == 4:
                        cut_done.wait(timeout=120)
                    while True:
                        try:
                            response = client.post(
                                "/api/tests", json={"directory": DIRECTORY, "version_identifier": commit}
                            )
                        except httpx.HTTPError as exc:
                            tally.other.append(f"{type(exc).__name__}: {exc}")
                            break
                        tally.record(response)
                        if response.status_code != 503:
                            break
                        restored.wait(timeout=float(response.headers.get("Retry-After") or 5))

        thread = threading.Thread(target=submitter, name="submitter")
        thread.start()
        try:
            wait_until(lambda: len(tally.accepted) >= 4, "jobs accepted before the cut", timeout=120)
            db_host.cut()
            cut = time.monotonic()
            cut_done.set()
            wait_until(lambda: tally.refused >= 1, "a 503 while the database host is cut off", timeout=120)
            refused_after = time.monotonic() - cut
        finally:
            cut_done.set()
            db_host.restore()
            back = time.monotonic()
            restored.set()
            thread.join(timeout=180)
        with stack.client() as admin:
            outcome = tally.outcome(stack, admin, timeout=240)
            grades = [admin.get(f"/api/results/{rid}").json() for rid in tally.accepted]
        print(f"database host cut off: first 503 {refused_after:.1f} s after the cut; every job done "
              f"{time.monotonic() - back:.1f} s after the link was back; {outcome}")  # fmt: skip
        assert tally.refused >= 1 and tally.refused_without_retry_after == 0, outcome
        assert outcome["other_answers"] == [] and outcome["accepted"] == len(commits), outcome
        assert (outcome["lost"], outcome["duplicated"]) == (0, 0), outcome
        assert all((g["status"], g["result"]) == (0, 1.0) for g in grades), grades
