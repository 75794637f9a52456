"""`/metrics` on a real API, Redis and Celery worker: the backlog while the broker is down, the queue depth while
no worker runs, and the counts of what happened once a worker has run the jobs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.store.catalog import load_catalog
from gateway.store.migrate import upgrade
from tests.service.conftest import PASSWORD
from tests.service.server import GatewayServer, free_port, running_server, wait_for
from tests.service.test_e2e_celery import example_catalog, poll_result_status, redis_server
from tests.support.celery_worker import base_env, running_worker, settings_from_env

pytestmark = [pytest.mark.slow, pytest.mark.redis]


Seen = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: GatewayServer) -> Seen:
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(seen: Seen, name: str, **labels: str) -> float:
    return seen.get((name, frozenset(labels.items())), 0.0)


def celery_depth(seen: Seen) -> float:
    celery = ("engine", "celery")
    return sum(v for (name, labels), v in seen.items() if name == "gateway_queue_depth" and celery in labels)


def test_backlog_then_queue_depth_then_counts(tmp_path: Path) -> None:
    data = tmp_path / "gw-metrics"
    catalog, repos = example_catalog(tmp_path / "example")
    port = free_port()  # the broker is down at first: nothing listens here yet
    env = {
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(port),
        "GATEWAY_RECONCILE_INTERVAL": "0.3",
        "GATEWAY_METRICS_CACHE_SECONDS": "0",
    }
    settings_env = {**env, "GATEWAY_DATA_DIR": str(data)}
    load_catalog(catalog, settings_from_env(settings_env))
    extra = [{"id": "m-x1", "user_id": "u-x1", "repository_url": repos.passing_url}]
    load_catalog({"course_members": extra}, settings_from_env(settings_env))
    with running_server(env, data) as server:
        with server.client(("admin", PASSWORD)) as admin:
            runs = [
                admin.post(
                    "/api/tests",
                    json={"directory": repos.path, "version_identifier": repos.passing_commit, "course_member_id": m},
                ).json()
                for m in ("m-alice", "m-x1")
            ]
        # The outbox relay tries each leg after its answer, and finds the broker down.
        seen = wait_for(
            lambda: (
                (s := scrape(server))
                and value(s, "gateway_engine_sends_total", engine="celery", outcome="deferred") >= 2
                and s
            ),
            60,
            what="both legs deferred by the relay",
        )
        assert value(seen, "gateway_outbox_backlog", engine="celery") == 2
        assert value(seen, "gateway_outbox_oldest_age_seconds", engine="celery") > 0
        assert value(seen, "gateway_queue_depth_readable", engine="celery") == 0
        assert value(seen, "gateway_engine_sends_total", engine="celery", outcome="deferred") >= 2
        with redis_server(port, tmp_path / "redis"):
            # The broker is back but no worker runs: the outbox drains into the Celery queue, which holds both.
            seen = wait_for(
                lambda: (s := scrape(server)) and value(s, "gateway_outbox_backlog", engine="celery") == 0
                and celery_depth(s) == 2 and s,
                60,
                what="the outbox to drain into the queue",
            )  # fmt: skip
            assert value(seen, "gateway_engine_sends_total", engine="celery", outcome="accepted") == 2
            assert value(seen, "gateway_legs_in_flight", engine="celery", role="primary", phase="queued") == 2
            assert value(seen, "gateway_legs_waiting_oldest_age_seconds", engine="celery") > 0
            ages = [v for (n, labels), v in seen.items() if n == "gateway_queue_oldest_age_seconds"]
            assert len(ages) == 1 and ages[0] > 0  # the one queue holding both messages
            with running_worker(base_env(env, data), concurrency=2):
                for run in runs:
                    assert poll_result_status(server, ("admin", PASSWORD), run["id"], timeout=180) == 0
                seen = wait_for(lambda: (s := scrape(server)) and celery_depth(s) == 0 and s, 30, what="empty queue")
        finished = value(seen, "gateway_legs_finished_total", engine="celery", role="primary", outcome="succeeded")
        assert finished == 2
        assert value(seen, "gateway_leg_duration_seconds_count", engine="celery", role="primary") == 2
        assert value(seen, "gateway_engine_send_seconds_count", engine="celery") == 2
        assert value(seen, "gateway_legs_in_flight", engine="celery", role="primary", phase="queued") == 0
        assert value(seen, "gateway_reconciler_cycle_seconds_count") > 0
        assert not [key for key in seen if key[0] == "gateway_queue_oldest_age_seconds"]  # every queue empty


@pytest.mark.postgres
def test_several_api_processes_report_one_total_in_multiprocess_mode(tmp_path: Path, postgres_db: Any) -> None:
    """`uvicorn --workers 2` with PROMETHEUS_MULTIPROC_DIR: whichever process answers a scrape, it shows every
    process's sends (the documented setup for several processes on one host)."""
    from tests.service.conftest import demo_catalog, fresh_pg_database
    from tests.service.server import stop_server

    data = tmp_path / "gw-multi"
    prom = tmp_path / "prometheus"
    prom.mkdir()
    with fresh_pg_database(postgres_db) as db:
        env = {**db.env(), "PROMETHEUS_MULTIPROC_DIR": str(prom), "GATEWAY_RECONCILE_INTERVAL": "0.5"}
        settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)})
        upgrade(settings)
        load_catalog(demo_catalog(), settings)
        port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "gateway.api.app:create_app", "--factory", "--workers", "2"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        log_path = tmp_path / "uvicorn.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                cmd, env=base_env(env, data), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = GatewayServer(process, port, log_path, env)
        try:
            wait_for(lambda: _healthy(server), 60, what="two API processes")
            for i in range(20):  # a new connection each: the processes share the listening socket
                answer = httpx.post(
                    f"{server.url}/api/tests",
                    auth=("admin", PASSWORD),
                    json={"directory": "week1/ex1", "course_member_id": "m-alice", "version_identifier": f"c{i}"},
                    timeout=30,
                )
                assert answer.status_code == 200, answer.text
            pids = {int(p.stem.rsplit("_", 1)[1]) for p in prom.glob("*.db")}
            assert len(pids) >= 2, pids  # both processes wrote their values
            for _ in range(6):
                seen = scrape(server)
                assert value(seen, "gateway_engine_sends_total", engine="celery", outcome="accepted") == 20
        finally:
            stop_server(server)


def _healthy(server: GatewayServer) -> bool:
    try:
        return httpx.get(f"{server.url}/api/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
