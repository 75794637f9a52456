"""Celery end to end: no-op and example-assignment jobs, jobs/s and p50/p99 round trip, three stacks in one run.

- `stock-pg`: Celery's stock database backend (`db+postgresql+psycopg2://`) in the worker, the reference.
- `gateway-pg`: the same PostgreSQL table through `PooledDatabaseBackend` in the worker.
- `redis-results`: Celery's Redis result backend in the worker (the second reference).
By default every stack is read by the same client, `CeleryAdapter.poll` (one pooled SQL query for all in-flight
ids on both PostgreSQL stacks; the backend's own read per id on Redis), so the stacks differ only at the worker;
`--own-clients` gives the stock stacks Celery's stock client (`AsyncResult.get`) instead.
Every stack uses the same Redis server (a database each, so the workers run side by side), the same worker
command (`gateway worker start`, prefork, concurrency 2) and the same client polling interval. Figures are
printed as ratios against `stock-pg` measured in this run, with the worker's own CPU per job (psutil over the
worker's process tree during the throughput part): the figure measured at the worker, whatever the client costs.

    .venv/bin/python bench/bench_celery.py [--noops 400] [--latency 60] [--examples 4] [--rounds 3] [--own-clients]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backends.celery import names  # noqa: E402
from backends.celery.adapter import CeleryAdapter  # noqa: E402
from bench.loadgen import private_redis, server_cpu_seconds  # noqa: E402
from tests.support.celery_worker import base_env, running_worker, settings_from_env  # noqa: E402

POLL = 0.005  # the same client polling interval for every stack


def _pg_database() -> tuple[str, Callable[[], None]]:
    import psycopg2

    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return name, drop


class Client:
    """How one stack's client submits and waits: stock `AsyncResult.get`, or the adapter's batched poll."""

    def __init__(self, env: dict[str, str], batched: bool) -> None:
        self.adapter = CeleryAdapter(settings_from_env(env))
        self.batched = batched

    def submit(self, task: str, kwargs: dict[str, Any]) -> str:
        return self.adapter.send(task, kwargs, str(uuid.uuid4()))

    def wait_all(self, ids: list[str], timeout: float = 600) -> dict[str, float]:
        """Wait until every id is final; returns when each was first seen done (monotonic)."""
        done: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        if self.batched:
            pending = list(ids)
            while pending and time.monotonic() < deadline:
                states = self.adapter.poll(pending)
                now = time.monotonic()
                for leg, state in states.items():
                    if state.phase.is_final:
                        done[leg] = now
                pending = [leg for leg in pending if leg not in done]
                if pending:
                    time.sleep(POLL)
        else:
            for leg in ids:
                self.adapter.app.AsyncResult(leg).get(timeout=timeout, interval=POLL, propagate=False)
                done[leg] = time.monotonic()
        return done

    def close(self) -> None:
        self.adapter.close()


def measure(
    client: Client, task: str, kwargs: Callable[[], dict[str, Any]], n: int, latency_n: int, worker_pid: int
) -> dict[str, float]:
    # throughput: n jobs in flight at once; the worker's CPU for them, read from its process tree
    cpu = server_cpu_seconds(worker_pid)
    start = time.monotonic()
    ids = [client.submit(task, kwargs()) for _ in range(n)]
    finished = client.wait_all(ids)
    elapsed = max(finished.values()) - start
    worker_cpu_ms = 1000 * (server_cpu_seconds(worker_pid) - cpu) / n
    # round trip: one job at a time
    rtts = []
    for _ in range(latency_n):
        t0 = time.monotonic()
        leg = client.submit(task, kwargs())
        rtts.append(client.wait_all([leg])[leg] - t0)
    rtts.sort()
    return {
        "jobs_per_s": n / elapsed,
        "worker_cpu_ms": worker_cpu_ms,
        "p50_ms": 1000 * statistics.median(rtts),
        "p99_ms": 1000 * rtts[min(len(rtts) - 1, int(round(0.99 * (len(rtts) - 1))))],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--noops", type=int, default=400)
    parser.add_argument("--latency", type=int, default=60)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--own-clients", action="store_true", help="stock stacks read with AsyncResult.get")
    args = parser.parse_args()

    # One Redis db per stack, so the three workers run side by side and the stacks are measured in interleaved
    # rounds: load from anything else on the machine hits all three alike (the median of the rounds is reported).
    # A Redis server of the bench's own (`bench.loadgen.private_redis`): never the shared one, no lock in its db 0.
    redis_ctx = private_redis()
    redis_port, _redis_process = redis_ctx.__enter__()
    redis_dbs = [0, 1, 2]
    try:
        pg_name, drop_pg = _pg_database()
    except BaseException:
        redis_ctx.__exit__(None, None, None)
        raise
    data = Path(tempfile.mkdtemp(prefix="bench-celery-"))
    pg_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{pg_name}"
    stacks = {
        "stock-pg": ({"CELERY_RESULT_BACKEND": "db+" + pg_url}, not args.own_clients),
        "gateway-pg": ({}, True),
        "redis-results": (
            {"CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{redis_port}/{redis_dbs[2]}"},
            not args.own_clients,
        ),
    }
    example_job: dict[str, Any] | None = None
    if args.examples:
        from backends.examples import materialize_example

        example_job = materialize_example(data / "example").test_job("passing").model_dump(mode="json")

    rounds: dict[str, dict[str, list[dict[str, float]]]] = {stack: {} for stack in stacks}
    try:
        with contextlib.ExitStack() as stack_ctx:
            clients: dict[str, Client] = {}
            pids: dict[str, int] = {}
            for (stack, (extra, batched)), db_number in zip(stacks.items(), redis_dbs, strict=True):
                services = {
                    "REDIS_HOST": "127.0.0.1",
                    "REDIS_PORT": str(redis_port),
                    "REDIS_DB": str(db_number),
                    "POSTGRES_HOST": "127.0.0.1",
                    "POSTGRES_DB": pg_name,
                }
                env = base_env({**services, **extra}, data / stack)
                worker = stack_ctx.enter_context(running_worker(env, concurrency=2, log_dir=data / stack))
                pids[stack] = worker.pid
                clients[stack] = Client(env, batched)
                stack_ctx.callback(clients[stack].close)
                measure(clients[stack], names.NOOP, dict, 20, 5, worker.pid)  # warm-up: connections, tables, forks
            for _ in range(args.rounds):
                for stack, client in clients.items():
                    rounds[stack].setdefault("noop", []).append(
                        measure(client, names.NOOP, dict, args.noops, args.latency, pids[stack])
                    )
                    if example_job is not None:
                        job = {"test_job": example_job, "execution_backend_properties": {}}
                        rounds[stack].setdefault("example", []).append(
                            measure(
                                client, names.STUDENT_TESTING, lambda job=job: dict(job), args.examples, 3, pids[stack]
                            )
                        )
    finally:
        drop_pg()
        redis_ctx.__exit__(None, None, None)

    results = {
        stack: {job: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for job, runs in jobs.items()}
        for stack, jobs in rounds.items()
    }
    ref = results["stock-pg"]
    print("\n| stack | job | jobs/s | × stock-pg | p50 ms | p99 ms | worker CPU ms/job | × stock-pg |")
    print("|---|---|---|---|---|---|---|---|")
    for stack, jobs in results.items():
        for job, m in jobs.items():
            ratio = m["jobs_per_s"] / ref[job]["jobs_per_s"]
            cpu_ratio = m["worker_cpu_ms"] / ref[job]["worker_cpu_ms"]
            print(
                f"| {stack} | {job} | {m['jobs_per_s']:.0f} | {ratio:.2f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} "
                f"| {m['worker_cpu_ms']:.2f} | {cpu_ratio:.2f} |"
            )


if __name__ == "__main__":
    main()
