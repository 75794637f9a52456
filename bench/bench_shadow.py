"""Shadowing's cost on the submit path, and the comparator's throughput.

1. Submit p50 with shadowing on vs off, in the same run against the same gateway process: `wrk` posts to
   `POST /api/tests` for a content without a shadow setting ("off") and for one whose every job gets a second
   leg ("on": `aa_fraction` 1, the extra leg on the same Celery engine, so the shadow path runs for real: the
   second leg in the same insert statement, its send to Redis in the background on the shadow threads, its
   "sent" mark; `--fraction` samples it like a live setting would). Rounds interleave off/on; the server's CPU
   time per request is read from /proc around each run. Prints the median over rounds and the ratio on/off.
2. The comparator on a pair of reports with 1,000 tests each (normalise, diff, classify): comparisons/s.

Run: `.venv/bin/python bench/bench_shadow.py [--seconds S] [--rounds N] [--connections C]` (needs PostgreSQL and
Redis on localhost, and `wrk`). The server is killed by its process group in a `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_submit import Server, environment, seed, start, stop  # noqa: E402
from common.settings import Settings  # noqa: E402
from gateway.compare.experiment import Experiment, LegRun  # noqa: E402
from gateway.compare.rules import default_rules  # noqa: E402
from gateway.jobs.shadow_admin import set_shadow  # noqa: E402
from gateway.store.catalog import load_catalog  # noqa: E402
from gateway.store.db import make_async_engine, make_sessionmaker  # noqa: E402
from tests.support.celery_worker import settings_from_env  # noqa: E402

WRK_SCRIPT = """
local counter = 0
local prefix = ""
function setup(thread)
  thread:set("tid", tostring(math.random(1, 1e9)))
end
function init(args)
  prefix = "%s-" .. tid .. "-"
end
request = function()
  counter = counter + 1
  local body = '{"directory": "%s", "course_member_id": "m1", "version_identifier": "' .. prefix .. counter .. '"}'
  return wrk.format("POST", "/api/tests", {["Content-Type"] = "application/json",
    ["Authorization"] = "Basic YmVuY2g6YmVuY2gtcHc="}, body)
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc (the server leads its group)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(server: Server, directory: str, seconds: int, connections: int) -> tuple[float, float, int]:
    """(p50 ms, requests/s, requests) of one wrk run against `directory`'s content."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (uuid.uuid4().hex[:8], directory))
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{min(2, connections)}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                script.name,
                server.url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return p50, rps, total


def _ms(text: str) -> float:
    value = float(re.sub(r"[a-z]+$", "", text))
    return value / 1000 if text.endswith("us") else value * 1000 if text.endswith("s") and "ms" not in text else value


def seed_shadow(env: dict[str, str], data: Path, fraction: float) -> None:
    settings: Settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)})
    load_catalog(
        {
            "course_contents": [
                {"id": "cc-on", "path": "w1.e2", "directory": "w1/e2", "execution_backend": "celery",
                 "reference_url": "file:///ref", "reference_commit": "0" * 40},
            ]
        },
        settings,
    )  # fmt: skip

    async def main() -> None:
        engine = make_async_engine(settings)
        try:
            values = {"aa_fraction": fraction, "max_in_flight": 10**9, "deadline_seconds": 3600}
            await set_shadow(make_sessionmaker(engine), backend=None, content="cc-on", values=values, user_id=None)
        finally:
            await engine.dispose()

    asyncio.run(main())


def submit_bench(args: argparse.Namespace) -> None:
    with environment() as (env, data):
        seed(env, data)
        seed_shadow(env, data, args.fraction)
        servers: list[Server] = []
        try:
            server = start("gateway", "gateway.api.app:create_app", "/api/tests", env, data / "gw", servers)
            wrk(server, "w1/e1", 3, args.connections)  # warm-up: pools, caches, threads
            wrk(server, "w1/e2", 3, args.connections)
            rows: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
            for n in range(args.rounds):
                for name, directory in (("off", "w1/e1"), ("on", "w1/e2")):
                    before = cpu_seconds(server.process.pid)
                    p50, rps, total = wrk(server, directory, args.seconds, args.connections)
                    cpu_ms = (cpu_seconds(server.process.pid) - before) * 1000 / max(1, total)
                    rows[name].append((p50, rps, cpu_ms))
                    print(f"round {n + 1} shadow {name:3}: p50 {p50:.2f} ms, {rps:.1f} req/s, {cpu_ms:.2f} ms CPU/req")
        finally:
            for s in servers:
                stop(s)
    med = {name: [statistics.median(col) for col in zip(*r, strict=True)] for name, r in rows.items()}
    (p_off, r_off, c_off), (p_on, r_on, c_on) = med["off"], med["on"]
    wrk_args = f"wrk -t{min(2, args.connections)} -c{args.connections} -d{args.seconds}s"
    print(f"second leg for a share {args.fraction:g} of the 'on' jobs; median of {args.rounds} rounds, {wrk_args}")
    print(f"shadow off: p50 {p_off:.2f} ms, {r_off:.1f} req/s, {c_off:.2f} ms CPU/req")
    print(f"shadow on:  p50 {p_on:.2f} ms, {r_on:.1f} req/s, {c_on:.2f} ms CPU/req")
    print(f"ratio on/off: p50 {p_on / p_off:.2f}, throughput {r_on / r_off:.2f}, CPU/req {c_on / c_off:.2f}")


def big_report(n: int, flip_every: int = 0) -> dict[str, Any]:
    tests = []
    for i in range(n):
        failed = flip_every and i % flip_every == 0
        tests.append({
            "name": f"test_case_{i}", "type": "test", "status": "COMPLETED", "result": "FAILED" if failed else "PASSED",
            "resultMessage": f"assert {i} == {i + 1} in /tmp/run-{uuid.uuid4().hex[:6]}/test_x.py" if failed else "",
            "statusMessage": "", "timestamp": "2026-11-26T10:00:00+00:00", "duration": 0.01,
            "summary": {"total": 1, "passed": int(not failed), "failed": int(bool(failed)), "skipped": 0},
        })  # fmt: skip
    passed = sum(t["result"] == "PASSED" for t in tests)
    summary = {"total": n, "passed": passed, "failed": n - passed, "skipped": 0}
    collections = [{"name": f"test_file_{k}.py", "type": "collection", "tests": tests[k::10], "summary": summary}
                   for k in range(10)]  # fmt: skip
    return {"name": "r", "type": "report", "status": "COMPLETED", "result": "PASSED", "summary": summary,
            "tests": collections, "environment": {"python": "3.11"}}  # fmt: skip


def comparator_bench(repeat: int) -> None:
    experiment = Experiment(default_rules())
    primary = LegRun(engine="celery", phase="succeeded", outcome="succeeded", report=big_report(1000))
    same = LegRun(engine="prefect", phase="succeeded", outcome="succeeded", report=copy.deepcopy(primary.report))
    other = LegRun(engine="prefect", phase="succeeded", outcome="succeeded", report=big_report(1000, flip_every=7))
    for name, shadow in (("match", same), ("mismatch (143 tests differ)", other)):
        experiment.run(primary, shadow)
        started = time.perf_counter()
        for _ in range(repeat):
            verdict = experiment.run(primary, shadow)
        elapsed = time.perf_counter() - started
        print(f"comparator, 1,000 tests, {name}: {repeat / elapsed:.1f} comparisons/s "
              f"({1000 * elapsed / repeat:.1f} ms each), outcome {verdict.outcome}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=50, help="comparator runs per case")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of 'on' jobs that get a second leg")
    parser.add_argument("--only", choices=["submit", "comparator"], default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.only != "submit":
        comparator_bench(args.repeat)
    if args.only != "comparator":
        submit_bench(args)


if __name__ == "__main__":
    main()
