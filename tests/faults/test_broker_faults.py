"""Faults of the broker and of restarted workers, on real processes (issue 24), each printing its recovery time.

The stack's Redis is a private `redis-server` with an fsync'ed append-only file (what a production Redis with AOF
keeps over a restart), so a test may SIGKILL it and start it again on the same port; the shared Redis is never
touched. The API and its reconciler, the workers and the result store (PostgreSQL, a database of this session)
are real processes. Each case asserts the outcome: every accepted job completed once with its right grade,
nothing lost; no case asserts a duration (the figures go to docs/reliability.md).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from backends.celery.adapter import CeleryAdapter
from backends.celery.factory import create_app
from tests.conftest import PostgresDB
from tests.faults.stack import ALICE, DIRECTORY, SLOW, FaultStack, Tally, fault_stack
from tests.support.celery_worker import WorkerProcess, base_env, kill_worker, running_worker, settings_from_env
from tests.support.redis_server import RedisServer, redis_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow]

JOBS = 40
# This module's Redis database (on its own server): the one whose queue keys a test deletes.
REDIS_DB = 5


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis"), persistent=True) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_db: PostgresDB, broker: RedisServer
) -> Iterator[FaultStack]:
    tmp = tmp_path_factory.mktemp("broker-faults")
    # The ping's bound far away: a rerun in this module can only come from the hold check (CELERY_UNHELD_...).
    bounds = {"CELERY_WORKER_LOST_SECONDS": "600", "CELERY_UNHELD_LOST_SECONDS": "5"}
    with fault_stack(tmp, None, {**postgres_db.env(), **broker.env(REDIS_DB), **bounds}, JOBS) as stack:
        yield stack


def answers_ping(env: dict[str, str], worker: WorkerProcess) -> bool:
    """Whether `worker` answers a ping, asked through connections of its own: kombu pools broker connections per
    URL for the whole process, so the probe names the host differently (`localhost`) and never shares (and so
    heals) the pooled connections of the adapter under test."""
    app = create_app(settings_from_env({**env, "REDIS_HOST": "localhost"}), main="fault-probe")
    try:
        replies = app.control.ping(destination=[worker.hostname], timeout=1.0) or []
        return any(worker.hostname in reply for reply in replies)
    except Exception:  # noqa: BLE001 - the broker is not back yet
        return False
    finally:
        app.close()


# ---------------------------------------------------------------------------------------- health after restart
def test_the_first_health_probe_after_a_redis_restart_reads_healthy(
    broker: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The adapter's pooled broker connections die with Redis. Once Redis is back and the worker answers again, the
    very first probe must read healthy: a probe that met a stale pooled connection is made once more before the
    engine is called unhealthy (before the fix it read `ConnectionError: Connection closed by server.`)."""
    data = tmp_path_factory.mktemp("health")
    env = base_env({**broker.env(), "CELERY_RESULT_BACKEND": broker.url(1)}, data)
    with running_worker(env, concurrency=1) as worker:
        adapter = CeleryAdapter(settings_from_env(env))
        try:
            assert adapter.health().healthy  # the pools now hold connections to this Redis
            broker.kill()
            restarted = time.monotonic()
            broker.start()
            wait_until(lambda: answers_ping(env, worker), "the worker back on the restarted Redis", timeout=120)
            health = adapter.health()
            print(f"first health probe after a Redis restart: {health} "
                  f"({time.monotonic() - restarted:.1f} s after the restart)")  # fmt: skip
            assert health.healthy, health
        finally:
            adapter.close()


# ------------------------------------------------------------------------------------------------- shared checks
def submit(client: httpx.Client, commit: str) -> httpx.Response:
    return client.post("/api/tests", json={"directory": DIRECTORY, "version_identifier": commit})


def running_on(admin: httpx.Client, leg: str) -> str | None:
    """The worker running `leg`, once the gateway has seen it start."""
    info = admin.get(f"/api/tasks/{leg}/status").json()
    return info["worker"] if info["status"] == "started" and info["worker"] else None


def succeeded(stack: FaultStack, leg: str) -> int:
    """How many times a worker stored `leg`'s success (once, whatever a fault did)."""
    return stack.worker_logs().count(f"[{leg}] succeeded")


def assert_completed_once_with_the_right_grade(
    stack: FaultStack, admin: httpx.Client, outcome: dict[str, Any], tally: Tally
) -> None:
    """Every accepted job completed (nothing lost), its work succeeded once, and its grade is the full mark these
    correct solutions earn."""
    assert outcome["other_answers"] == [] and outcome["lost"] == 0, outcome
    for result_id, leg in tally.accepted.items():
        assert succeeded(stack, leg) == 1, (leg, succeeded(stack, leg))
        row = admin.get(f"/api/results/{result_id}").json()
        assert (row["status"], row["result"]) == (0, 1.0), row


def rerun_reasons(stack: FaultStack, leg: str) -> list[str]:
    """Why the reconciler ran `leg` again (its log line per rerun)."""
    return re.findall(
        rf"leg {re.escape(leg)} failed in the infrastructure \((.*?)\): running it again", stack.server.log_text()
    )


# ------------------------------------------------------------------------------------ a worker restarted in place
def test_a_worker_restarted_under_the_same_hostname_has_its_leg_rerun(stack: FaultStack) -> None:
    """SIGKILL the worker running a job and start a new one under the same hostname (what compose `restart:` does
    to `celery-system-worker@%h`): the new one answers every ping, so only the hold check can tell the task is gone
    (the ping's own bound is set to 10 minutes in this module); the leg runs again once the new worker is up,
    not at Redis's visibility timeout (960 s)."""
    tally = Tally()
    with stack.client(SLOW) as slow, stack.client() as admin:
        tally.record(submit(slow, stack.slow_commits[0]))
        (leg,) = tally.accepted.values()
        victim_name = wait_until(lambda: running_on(admin, leg), f"{leg} running", timeout=120, interval=0.1)
        (victim,) = [w for w in stack.live_workers() if w.hostname == victim_name]
        kill_worker(victim)
        stack.start_worker(hostname=victim_name, log_dir=stack.log_dir / "restarted")
        back = time.monotonic()
        wait_until(lambda: stack.executions(leg) >= 2, f"{leg} run again", timeout=300)
        recovery = time.monotonic() - back
        outcome = tally.outcome(stack, admin, timeout=180)
        print(f"worker restarted under its hostname: re-run {recovery:.1f} s after the new worker was up; {outcome}")
        assert_completed_once_with_the_right_grade(stack, admin, outcome, tally)
    assert stack.executions(leg) == 2
    (reason,) = rerun_reasons(stack, leg)
    assert "answers but has not held the task" in reason, reason


# ------------------------------------------------------------------------------------------- Redis restarted
def test_redis_restarted_while_tasks_run_has_them_rerun(stack: FaultStack, broker: RedisServer) -> None:
    """Redis SIGKILLed and started again (its append-only file kept) while two jobs run: the worker cancels them on
    the connection loss (`worker_cancel_long_running_tasks_on_connection_loss`; their rows read RETRY) and their
    messages sit unacknowledged until the visibility timeout. The gateway finds nothing holds them and runs them
    again once the broker is back."""
    tally = Tally()
    with stack.client(SLOW) as slow, stack.client() as admin:
        for commit in stack.slow_commits[1:3]:
            tally.record(submit(slow, commit))
        legs = list(tally.accepted.values())
        wait_until(lambda: all(running_on(admin, leg) for leg in legs), "both jobs running", timeout=120)
        broker.kill()
        broker.start()
        back = time.monotonic()
        wait_until(lambda: all(stack.executions(leg) >= 2 for leg in legs), "both run again", timeout=300)
        recovery = time.monotonic() - back
        outcome = tally.outcome(stack, admin, timeout=180)
        print(f"Redis restarted during running tasks: re-run {recovery:.1f} s after Redis was back; {outcome}")
        assert_completed_once_with_the_right_grade(stack, admin, outcome, tally)
    for leg in legs:
        assert stack.executions(leg) == 2, leg
        assert rerun_reasons(stack, leg), leg


# ------------------------------------------------------------------------------------------- messages lost
def test_queued_messages_lost_at_the_broker_are_sent_again(stack: FaultStack, broker: RedisServer) -> None:
    """Two slow jobs hold the worker's two slots; three more wait in the queue. The queue keys are deleted (what a
    FLUSHALL or a Redis restart without persistence does to them; only this stack's own Redis and database): the
    gateway finds those legs neither queued nor held by any worker and sends them again."""
    from backends.celery import names, queues

    tally = Tally()
    with stack.client(SLOW) as slow, stack.client(ALICE) as alice, stack.client() as admin:
        for commit in stack.slow_commits[3:5]:
            tally.record(submit(slow, commit))
        blockers = list(tally.accepted.values())
        wait_until(lambda: all(running_on(admin, leg) for leg in blockers), "the slots taken", timeout=120)
        waiting = Tally()
        for commit in stack.next_commits(3):
            waiting.record(submit(alice, commit))
        legs = set(waiting.accepted.values())
        url = broker.url(REDIS_DB)
        wait_until(lambda: legs <= queues.redis_queued_ids(url), "the jobs queued at the broker", timeout=120)
        client = broker.client(REDIS_DB)
        try:
            client.delete(*[key for queue in names.ALL_QUEUES for key in queues.redis_queue_keys(queue)])
        finally:
            client.close()
        lost = time.monotonic()
        wait_until(lambda: legs <= queues.redis_queued_ids(url), "the lost jobs sent again", timeout=300)
        recovery = time.monotonic() - lost
        tally.accepted.update(waiting.accepted)
        outcome = tally.outcome(stack, admin, timeout=240)
        print(f"queued messages lost: sent again {recovery:.1f} s after the loss; {outcome}")
        assert_completed_once_with_the_right_grade(stack, admin, outcome, tally)
    for leg in legs:
        assert stack.executions(leg) == 1, leg  # the lost message never ran
        (reason,) = rerun_reasons(stack, leg)
        assert "neither queued at the broker nor held" in reason, reason
