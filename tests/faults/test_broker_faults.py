"""Faults of the broker and of restarted workers, on real processes (issue 24), each printing its recovery time.

The stack's Redis is a private `redis-server` with an fsync'ed append-only file (what a production Redis with AOF
keeps over a restart), so a test may SIGKILL it and start it again on the same port; the shared Redis is never
touched. The API and its reconciler, the workers and the result store (PostgreSQL, a database of this session)
are real processes. Each case asserts the outcome: every accepted job completed once with its right grade,
nothing lost; no case asserts a duration (the figures go to docs/reliability.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from backends.celery.adapter import CeleryAdapter
from backends.celery.factory import create_app
from tests.conftest import PostgresDB
from tests.faults.stack import FaultStack, fault_stack
from tests.support.celery_worker import WorkerProcess, base_env, running_worker, settings_from_env
from tests.support.redis_server import RedisServer, redis_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow]

JOBS = 40


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis"), persistent=True) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_db: PostgresDB, broker: RedisServer
) -> Iterator[FaultStack]:
    tmp = tmp_path_factory.mktemp("broker-faults")
    with fault_stack(tmp, None, {**postgres_db.env(), **broker.env()}, JOBS) as stack:
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
