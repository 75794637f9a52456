"""Shared by the HTTP benchmarks: wrk as the load generator, server CPU per request from psutil.

wrk (a native generator: `apt-get install -y wrk`) drives the server, so the client's own cost does not cap
what is measured. The request body comes from `bench/wrk_post.lua` (a unique value per request, auth header).
The server's CPU time is read from its process tree (psutil) before and after each run: CPU per request is the
figure that does not depend on what else the machine is doing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
