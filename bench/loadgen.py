"""Shared by the HTTP benchmarks: wrk as the load generator, server CPU per request from psutil.

wrk (a native generator: `apt-get install -y wrk`) drives the server, so the client's own cost does not cap
what is measured. The request body comes from `bench/wrk_post.lua` (a unique value per request, auth header).
The server's CPU time is read from its process tree (psutil) before and after each run: CPU per request is the
figure that does not depend on what else the machine is doing. The services' share is counted too: the CPU of
the PostgreSQL backends serving the bench's database and of the bench's own Redis server (`ServiceCpu`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

LUA = Path(__file__).with_name("wrk_post.lua")


@dataclass(frozen=True)
class LoadFigures:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    return found


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of the server process and its children (uvicorn has none with one worker)."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of one process in MiB, from `/proc/<pid>/status` (VmRSS, VmHWM). The peak is
    the kernel's high-water mark since the process started, so a burst between two reads is not missed."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # kB
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def run_wrk(
    url: str,
    path: str,
    pid: int,
    *,
    connections: int,
    seconds: float,
    body: str,
    auth: str = "",
    threads: int = 2,
) -> LoadFigures:
    """One wrk run of POSTs; `body` is a template whose `{n}` wrk replaces with a unique number per request."""
    cmd = [
        wrk_binary(), f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
        "-s", str(LUA), url, "--", path, body, auth,
    ]  # fmt: skip
    before = server_cpu_seconds(pid)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    cpu = server_cpu_seconds(pid) - before
    line = next(line for line in out.splitlines() if line.startswith("JSON "))
    data = json.loads(line[5:])
    requests = int(data["requests"])
    return LoadFigures(
        requests=requests,
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=int(data["errors"]),
        cpu_ms_per_request=1000 * cpu / max(requests, 1),
    )


# --------------------------------------------------------------------------------------- the services' own CPU
@contextlib.contextmanager
def private_redis() -> Iterator[tuple[int, psutil.Process]]:
    """A redis-server of the bench's own on a free loopback port (no persistence), killed at the end: a bench
    never locks or uses the shared Redis, and its Redis CPU is that server's alone. Yields (port, process)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)  # polling interval of a deadline loop
        yield port, psutil.Process(process.pid)
    finally:
        process.kill()
        process.wait(timeout=10)


def pg_backend_cpu_seconds(database: str, **connect: Any) -> float:
    """User + system CPU so far of the PostgreSQL backends connected to `database` (this probe's own excluded):
    the store's share of a run is the difference across it. A backend that exits during a run takes its CPU with
    it, so the benches keep their pools open (the figure is then a lower bound only for churned connections)."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(dbname="postgres", **connect)) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
        pids = [row[0] for row in cur.fetchall()]
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


@dataclass
class ServiceCpu:
    """PostgreSQL (the bench database's backends) and Redis (the bench's own server) CPU seconds, read together."""

    database: str
    redis: psutil.Process | None
    connect: dict[str, Any]

    def read(self) -> tuple[float, float]:
        redis_cpu = 0.0
        if self.redis is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = self.redis.cpu_times()
                redis_cpu = times.user + times.system
        return pg_backend_cpu_seconds(self.database, **self.connect), redis_cpu
