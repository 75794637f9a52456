"""The submit path: `POST /api/tests` on the Celery route vs a thin reference endpoint, in the same run.

Both run as real uvicorn processes (one process each) against the same PostgreSQL server and Redis broker (no
worker: messages just queue). wrk drives them (`bench/loadgen.py`): throughput and p50/p99 latency at 32
connections and at 1 connection (`--connections 32 128`: any loads), the server's CPU per request (psutil on its
pid), its memory (resident after each run and the kernel's peak, VmHWM, over the whole process: idle before the
warm-up, then under load) and the new PostgreSQL connections it opened per 1,000 requests
(`pg_stat_database.sessions`), in interleaved rounds (reference, gateway, reference, gateway ...) so load from
other processes hits both alike.

The gateway runs as deployed with a separate reconciler: the API (`GATEWAY_RECONCILE_IN_API=false`) and one
`gateway reconcile` process, the outbox relay that sends the Celery legs the API commits (woken by PostgreSQL
NOTIFY). Its CPU over the run is reported beside the API's, and their sum per request is what the gateway cost;
a run counts only once the outbox is empty again: the time from wrk's end until every leg of the run was sent
is added to the run's duration, so the throughput is of jobs admitted *and sent*. The relay's periodic tick
(a poll of every open leg: with no worker every leg stays open) is set to an hour so that it does not run
during the measurement; `bench/bench_reconciler.py` measures that cycle on its own. Prints every round, the
medians and the ratio gateway/reference.

Run: `.venv/bin/python bench/bench_submit.py [--seconds 10] [--rounds 3] [--concurrency 32 | --connections 32 128]`.
Every server it starts leads its own process group and is killed by that group in a `finally` (also on Ctrl-C
or an exception), so no uvicorn outlives the run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
import psutil
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import ServiceCpu, memory_mib, private_redis, run_wrk, server_cpu_seconds  # noqa: E402
from gateway.store.catalog import load_catalog  # noqa: E402
from gateway.store.migrate import upgrade  # noqa: E402
from tests.support.celery_worker import base_env, settings_from_env  # noqa: E402

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@dataclass
class Server:
    """A uvicorn process leading its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    path: str
    log_path: Path

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(server: Server) -> None:
    """TERM the whole group, then KILL whatever is left; never raises."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=wait)


def start(name: str, app: str, path: str, env: dict[str, str], data: Path, servers: list[Server]) -> Server:
    """Start `uvicorn app --factory` on a free port; registered in `servers` before it is waited for.

    Both apps answer `GET /api/health` once their lifespan (pools, schema check) has run.
    """
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    log_path = data / f"{name}.log"
    cmd = [sys.executable, "-m", "uvicorn", app, "--factory", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning", "--no-access-log"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, env=base_env(env, data), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(name, process, f"http://127.0.0.1:{port}", path, log_path)
    servers.append(server)
    return ready(server, "/api/health")


def ready(server: Server, probe: str) -> Server:
    """`server` once `GET probe` answers (60 s at most; its log in the error if it exits or never answers)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{server.url}{probe}", timeout=1).raise_for_status()
            return server
        time.sleep(0.1)  # polling interval of a deadline loop
    raise TimeoutError(f"{server.name} not ready:\n{server.log_tail()}")


def start_reconciler(env: dict[str, str], data: Path, servers: list[Server]) -> Server:
    """`gateway reconcile` in its own process group (its periodic tick set to 1 h: only wake-ups flush the
    outbox), registered in `servers`; ready once its metrics port answers."""
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    log_path = data / "reconcile.log"
    cmd = [str(Path(sys.executable).with_name("gateway")), "reconcile", "--metrics-port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd,
            env=base_env({**env, "GATEWAY_RECONCILE_INTERVAL": "3600"}, data),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server("reconciler", process, f"http://127.0.0.1:{port}", "/metrics", log_path)
    servers.append(server)
    return ready(server, "/metrics")


# The bench's own Redis server for this run (`environment`): its CPU is counted as the Redis share.
REDIS: list[psutil.Process] = []


@contextlib.contextmanager
def environment() -> Iterator[tuple[dict[str, str], Path]]:
    """A fresh PostgreSQL database, a Redis server of the bench's own (never the shared one) and a temp dir; all
    removed afterwards."""
    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True
    name = f"bench_submit_{uuid.uuid4().hex[:8]}"
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        with private_redis() as (port, redis_process), TemporaryDirectory() as tmp:
            REDIS[:] = [redis_process]
            env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_DB": name, "REDIS_HOST": "127.0.0.1",
                   "REDIS_PORT": str(port), "REDIS_DB": "0", "GATEWAY_RECONCILE_IN_API": "false"}  # fmt: skip
            yield env, Path(tmp)
    finally:
        REDIS.clear()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def service_cpu(database: str) -> ServiceCpu:
    """PostgreSQL and Redis CPU of this run's database and Redis server (`bench.loadgen.ServiceCpu`)."""
    return ServiceCpu(database, REDIS[0] if REDIS else None, dict(PG))


def seed(env: dict[str, str], data: Path) -> None:
    settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)})
    upgrade(settings)
    load_catalog(
        {
            "execution_backends": [{"slug": "celery", "type": "celery"}],
            "course_contents": [
                {
                    "id": "cc",
                    "path": "w1.e1",
                    "directory": "w1/e1",
                    "execution_backend": "celery",
                    "reference_url": "file:///ref",
                    "reference_commit": "0" * 40,
                }
            ],
            "course_members": [{"id": "m1", "user_id": "u1", "repository_url": "file:///student"}],
            "users": [{"username": "bench", "password": "bench-pw", "role": "admin"}],
        },
        settings,
    )


def bodies() -> tuple[str, str]:
    """wrk body templates; `{n}` is unique per request, the run id unique per call (a new commit every time)."""
    run = uuid.uuid4().hex[:8]
    gateway = json.dumps({"directory": "w1/e1", "course_member_id": "m1", "version_identifier": f"{run}-{{n}}"})
    reference = json.dumps({"module": {"url": "file:///student", "commit": f"{run}-{{n}}"}})
    return gateway, reference


def pg_sessions(database: str) -> int:
    """Sessions ever opened on `database` (PostgreSQL 14+): the delta over a run is the connections it opened."""
    with contextlib.closing(psycopg2.connect(dbname="postgres", **PG)) as conn, conn.cursor() as cur:
        cur.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (database,))
        row = cur.fetchone()
        return int(row[0]) if row else 0


def unsent_legs(database: str) -> int:
    """Legs the gateway committed and its relay has not sent yet (the outbox)."""
    with contextlib.closing(psycopg2.connect(dbname=database, **PG)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM leg WHERE dispatch_state = 'pending' AND NOT finished")
        return int(cur.fetchone()[0])  # type: ignore[index]


def drain_seconds(database: str, timeout: float = 120.0) -> float:
    """Seconds until the outbox is empty (0 when it already is); fails the bench if the relay never catches up."""
    started = time.monotonic()
    while (left := unsent_legs(database)) > 0:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the relay left {left} legs unsent {timeout:.0f} s after the load ended")
        time.sleep(0.05)  # polling interval of a deadline loop
    return time.monotonic() - started


def measure(
    server: Server, body: str, auth: str, connections: int, seconds: float, database: str, relay: Server | None = None
) -> dict[str, float]:
    sessions = pg_sessions(database)
    services = service_cpu(database)
    pg_before, redis_before = services.read()
    relay_cpu = server_cpu_seconds(relay.process.pid) if relay else 0.0
    figures = run_wrk(server.url, server.path, server.process.pid, connections=connections, seconds=seconds,
                      body=body, auth=auth)  # fmt: skip
    drained = drain_seconds(database) if relay else 0.0
    relay_cpu = server_cpu_seconds(relay.process.pid) - relay_cpu if relay else 0.0
    pg_after, redis_after = services.read()
    opened = pg_sessions(database) - sessions - 1 - (1 if relay else 0)  # minus our own probes
    if figures.errors:
        raise RuntimeError(f"{server.name}: {figures.errors} errors\n{server.log_tail()}")
    rss, peak = memory_mib(server.process.pid)
    relay_ms = 1000 * relay_cpu / max(figures.requests, 1)
    return {
        # Admitted and sent: a relay that lags behind the API lengthens the run by its drain time.
        "rps": figures.requests / (figures.seconds + drained),
        "admitted_rps": figures.rps,
        "drain_ms": 1000 * drained,
        "p50": figures.p50_ms,
        "p99": figures.p99_ms,
        "cpu": figures.cpu_ms_per_request,
        "relay_cpu": relay_ms,
        "pg_cpu": 1000 * (pg_after - pg_before) / max(figures.requests, 1),
        "redis_cpu": 1000 * (redis_after - redis_before) / max(figures.requests, 1),
        # Everything the request costs the machine but wrk: server, relay, PostgreSQL and Redis.
        "total_cpu": figures.cpu_ms_per_request
        + relay_ms
        + 1000 * (pg_after - pg_before + redis_after - redis_before) / max(figures.requests, 1),
        "conns_per_1k": 1000 * opened / max(figures.requests, 1),
        # The server's memory after the run and its peak so far (VmHWM: since the process started).
        "rss_mib": rss,
        "peak_mib": peak,
    }


@contextlib.contextmanager
def servers_up(env: dict[str, str], data: Path) -> Iterator[tuple[Server, Server, Server]]:
    servers: list[Server] = []
    try:
        gateway = start("gateway", "gateway.api.app:create_app", "/api/tests", env, data / "gw", servers)
        relay = start_reconciler(env, data / "relay", servers)
        reference = start("reference", "bench.submit_reference:create_app", "/ref", env, data / "ref", servers)
        yield gateway, reference, relay
    except BaseException:
        for server in servers:
            print(f"--- {server.name} log:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        for server in servers:
            stop(server)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run (whole seconds: wrk takes no fraction)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--connections", type=int, nargs="+", default=None, help="the loads (default: --concurrency and 1)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # A plain `kill` of the bench must clean up too: turn SIGTERM into an exception so the finally blocks run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    auth = "Basic " + base64.b64encode(b"bench:bench-pw").decode()
    connections = args.connections or [args.concurrency, 1]
    loads = {f"{c} conn{'s' if c > 1 else ''}": c for c in connections}
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}

    with environment() as (env, data):
        seed(env, data)
        database = env["POSTGRES_DB"]
        with servers_up(env, data) as (gateway, reference, relay):
            relays = {gateway.name: relay, reference.name: None}
            idle = {server.name: memory_mib(server.process.pid)[0] for server in (reference, gateway)}
            for server, login in ((reference, ""), (gateway, auth)):  # warm-up: pools, auth and catalog caches
                measure(server, bodies()[server is reference], login, max(connections), 2, database,
                        relays[server.name])  # fmt: skip
            for n in range(args.rounds):
                for load, connections in loads.items():
                    for server, login in ((reference, ""), (gateway, auth)):
                        body = bodies()[server is reference]
                        got = measure(server, body, login, connections, args.seconds, database, relays[server.name])
                        figures.setdefault((load, server.name), []).append(got)
                        line = (
                            f"round {n + 1} {load:9} {server.name:9}: {got['rps']:7.1f} req/s sent "
                            f"({got['admitted_rps']:.1f} admitted, outbox drained {got['drain_ms']:.0f} ms after), "
                            f"p50 {got['p50']:.2f} ms, p99 {got['p99']:.2f} ms, CPU {got['cpu']:.2f} ms/req "
                            f"+ relay {got['relay_cpu']:.2f} + PostgreSQL {got['pg_cpu']:.2f} + Redis "
                            f"{got['redis_cpu']:.2f}, {got['conns_per_1k']:.1f} new PG conns/1k req, "
                            f"RSS {got['rss_mib']:.0f} MiB (peak {got['peak_mib']:.0f})"
                        )
                        print(line, flush=True)

    print(f"\nmedian of {args.rounds} interleaved rounds, wrk {args.seconds:.0f} s per run")
    print("| load | server | req/s (sent) | p50 ms | p99 ms | server CPU ms/req | relay CPU ms/req | PostgreSQL CPU "
          "ms/req | Redis CPU ms/req | total CPU ms/req | new PG conns/1k |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    med = {key: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for key, rows in figures.items()}
    for (load, name), m in med.items():
        print(f"| {load} | {name} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu']:.2f} | "
              f"{m['relay_cpu']:.2f} | {m['pg_cpu']:.2f} | {m['redis_cpu']:.2f} | {m['total_cpu']:.2f} | "
              f"{m['conns_per_1k']:.1f} |")  # fmt: skip
    for load in loads:
        g, r = med[(load, "gateway")], med[(load, "reference")]
        print(
            f"ratio gateway/reference at {load}: throughput {g['rps'] / r['rps']:.2f}, "
            f"p50 {g['p50'] / r['p50']:.2f}, p99 {g['p99'] / r['p99']:.2f}, API CPU/req {g['cpu'] / r['cpu']:.2f}, "
            f"total CPU/req (server + relay + PostgreSQL + Redis) {g['total_cpu'] / r['total_cpu']:.2f}"
        )
    for name in ("reference", "gateway"):
        after = {load: max(r["rss_mib"] for r in figures[(load, name)]) for load in loads}
        peak = max(r["peak_mib"] for load in loads for r in figures[(load, name)])
        print(f"memory {name}: idle {idle[name]:.0f} MiB, resident after a run (max) "
              + ", ".join(f"{load} {mib:.0f} MiB" for load, mib in after.items())
              + f", peak (VmHWM) {peak:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
