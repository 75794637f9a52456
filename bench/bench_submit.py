"""The submit path: `POST /api/tests` on the Celery route vs a thin reference endpoint, in the same run.

Both run as real uvicorn processes against the same PostgreSQL server and Redis broker (no worker: messages
just queue). Throughput with 32 concurrent connections, and p50/p99 latency of sequential requests, in
interleaved rounds (reference, gateway, reference, gateway ...) so load from other processes on the machine hits
both alike; the figures are the median over rounds. Prints the ratio gateway/reference.

Run: `.venv/bin/python bench/bench_submit.py [--requests N] [--sequential N] [--rounds N]`.
Every server it starts leads its own process group and is killed by that group in a `finally` (also on Ctrl-C
or an exception), so no uvicorn outlives the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import psycopg2
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.store.catalog import load_catalog  # noqa: E402
from gateway.store.migrate import upgrade  # noqa: E402
from tests.support.celery_worker import base_env, settings_from_env  # noqa: E402

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
Body = Callable[[int], dict[str, Any]]


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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{server.url}/api/health", timeout=1).raise_for_status()
            return server
        time.sleep(0.1)  # polling interval of a deadline loop
    raise TimeoutError(f"{name} not ready:\n{server.log_tail()}")


async def throughput(server: Server, body: Body, total: int, concurrency: int, auth: Any) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, auth=auth, limits=limits, timeout=60) as client:
        todo = iter(range(total))

        async def worker() -> None:
            for i in todo:
                resp = await client.post(server.path, json=body(i))
                if resp.status_code != 200:
                    raise RuntimeError(f"{server.name} {resp.status_code}: {resp.text[:500]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


def sequential(server: Server, body: Body, total: int, auth: Any) -> tuple[float, float]:
    times = []
    with httpx.Client(base_url=server.url, auth=auth, timeout=60) as client:
        for i in range(total):
            started = time.perf_counter()
            resp = client.post(server.path, json=body(i))
            times.append(time.perf_counter() - started)
            if resp.status_code != 200:
                raise RuntimeError(f"{server.name} {resp.status_code}: {resp.text[:500]}")
    times.sort()
    return statistics.median(times) * 1000, times[max(0, int(len(times) * 0.99) - 1)] * 1000


@contextlib.contextmanager
def environment() -> Iterator[tuple[dict[str, str], Path]]:
    """A fresh PostgreSQL database, an exclusively held Redis db and a temp dir; all removed afterwards."""
    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True
    name = f"bench_submit_{uuid.uuid4().hex[:8]}"
    lock = redis.Redis(host="127.0.0.1", port=6379)
    token = uuid.uuid4().hex
    db = next((n for n in range(15, 0, -1) if lock.set(f"gateway-tests:lock:{n}", token, nx=True, ex=3600)), None)
    if db is None:
        sys.exit("no free Redis database")
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        with TemporaryDirectory() as tmp:
            env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_DB": name, "REDIS_HOST": "127.0.0.1", "REDIS_DB": str(db),
                   "GATEWAY_RECONCILE_INTERVAL": "5"}  # fmt: skip
            yield env, Path(tmp)
    finally:
        redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
        if lock.get(f"gateway-tests:lock:{db}") == token.encode():
            lock.delete(f"gateway-tests:lock:{db}")
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


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


def bodies() -> tuple[Body, Body]:
    run = uuid.uuid4().hex[:6]

    def gateway(i: int) -> dict[str, Any]:
        return {"directory": "w1/e1", "course_member_id": "m1", "version_identifier": f"{run}-{i}-{time.time_ns()}"}

    def reference(i: int) -> dict[str, Any]:
        return {"module": {"url": "file:///student", "commit": str(i)}}

    return gateway, reference


@contextlib.contextmanager
def servers_up(env: dict[str, str], data: Path) -> Iterator[tuple[Server, Server]]:
    servers: list[Server] = []
    try:
        gateway = start("gateway", "gateway.api.app:create_app", "/api/tests", env, data / "gw", servers)
        reference = start("reference", "bench.submit_reference:create_app", "/ref", env, data / "ref", servers)
        yield gateway, reference
    except BaseException:
        for server in servers:
            print(f"--- {server.name} log:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        for server in servers:
            stop(server)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1500, help="per round, for throughput")
    parser.add_argument("--sequential", type=int, default=300, help="per round, for latency")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # A plain `kill` of the bench must clean up too: turn SIGTERM into an exception so the finally blocks run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with environment() as (env, data):
        seed(env, data)
        with servers_up(env, data) as (gateway, reference):
            gw_body, ref_body = bodies()
            auth = ("bench", "bench-pw")
            sequential(gateway, gw_body, 50, auth)  # warm-up: pools, auth cache, catalog cache
            sequential(reference, ref_body, 50, None)
            figures: dict[str, list[tuple[float, float, float]]] = {"reference": [], "gateway": []}
            for n in range(args.rounds):
                for server, body, login in ((reference, ref_body, None), (gateway, gw_body, auth)):
                    tp = asyncio.run(throughput(server, body, args.requests, args.concurrency, login))
                    p50, p99 = sequential(server, body, args.sequential, login)
                    figures[server.name].append((tp, p50, p99))
                    print(f"round {n + 1} {server.name:9}: {tp:7.1f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")

    med = {name: [statistics.median(col) for col in zip(*rows, strict=True)] for name, rows in figures.items()}
    (rtp, rp50, rp99), (gtp, gp50, gp99) = med["reference"], med["gateway"]
    print(f"median of {args.rounds} rounds, {args.requests} requests over {args.concurrency} connections, "
          f"{args.sequential} sequential")  # fmt: skip
    print(f"reference: {rtp:7.1f} req/s, p50 {rp50:.2f} ms, p99 {rp99:.2f} ms")
    print(f"gateway:   {gtp:7.1f} req/s, p50 {gp50:.2f} ms, p99 {gp99:.2f} ms")
    print(f"ratio gateway/reference: throughput {gtp / rtp:.2f}, p50 {gp50 / rp50:.2f}, p99 {gp99 / rp99:.2f}")


if __name__ == "__main__":
    main()
