"""`/metrics` with 100,000 legs in the store, and the submit path with metrics on vs off, measured with wrk.

Part 1: a PostgreSQL store seeded with 100,000 legs (99,000 finished, 1,000 open across both outbox states),
the gateway on a Redis broker; `/metrics` with the snapshot cache off (`GATEWAY_METRICS_CACHE_SECONDS=0`, so
every scrape pays the grouped query and the queue read) and on (the default 5 s), by wrk with one connection:
latency and the server's CPU per scrape (user + system time of the uvicorn process, from psutil).

Part 2: two gateways on the same store, `GATEWAY_METRICS_ENABLED=true` and `false`, `POST /api/tests` by wrk
(each request a new commit) in interleaved rounds (off, on, off, on ...); prints req/s and server CPU per request
of each, their medians and the ratio on/off.

Run: `.venv/bin/python bench/bench_metrics.py [--legs 100000] [--rounds 3] [--duration 8]`.
Needs PostgreSQL and Redis on 127.0.0.1 (like bench_submit.py) and `wrk`.
"""

from __future__ import annotations

import argparse
import base64
import re
import signal
import statistics
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg2
from psycopg2.extras import Json, execute_values

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_submit import Server, environment, seed, start, stop  # noqa: E402

SCRAPE_GOAL_MS = 50.0
SUBMIT_GOAL_RATIO = 1.03


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def seed_legs(env: dict[str, str], total: int) -> None:
    """`total` legs, 1% open (half in the outbox, half sent), the rest finished over the last 30 days."""
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=env["POSTGRES_DB"])
    now = datetime.now(UTC)
    rows = []
    for i in range(total):
        engine = "celery" if i % 2 else "prefect"
        created = now - timedelta(seconds=i * 26)
        is_open = i % 100 == 0
        state = ("pending" if i % 200 == 0 else "sent") if is_open else "sent"
        rows.append((
            str(uuid.uuid4()), "primary", engine, "student_testing", "queued" if is_open else "succeeded",
            not is_open, None if is_open else "succeeded", Json({"kind": "student_testing", "params": {}}),
            state, 1, created, created, None if is_open else created + timedelta(seconds=20),
            None if state == "pending" else created,
        ))  # fmt: skip
    with conn, conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO leg (id, role, engine, task_name, phase, finished, outcome, spec, dispatch_state,"
            " dispatch_attempts, created_at, updated_at, finished_at, dispatched_at) VALUES %s",
            rows,
            page_size=5000,
        )
        cur.execute("ANALYZE leg")
    conn.close()


def wrk(url: str, duration: int, connections: int, script: Path | None = None) -> tuple[float, float]:
    """(requests per second, mean latency ms) from wrk's summary; non-2xx answers abort the run."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    latency = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, latency


def measured(server: Server, url: str, duration: int, connections: int, script: Path | None = None) -> tuple:
    """wrk against `server`, with the server's CPU per request."""
    before = cpu_seconds(server.process.pid)
    rps, latency = wrk(url, duration, connections, script)
    cpu = cpu_seconds(server.process.pid) - before
    return rps, latency, cpu / max(1.0, rps * duration) * 1000


def submit_script(folder: Path, tag: str) -> Path:
    """A wrk script: POST /api/tests as the bench admin, a new commit each request (no existing-run shortcut)."""
    auth = base64.b64encode(b"bench:bench-pw").decode()
    script = folder / f"submit-{tag}.lua"
    script.write_text(
        'local n = 0\n'
        'request = function()\n'
        '  n = n + 1\n'
        f'  local body = string.format(\'{{"directory":"w1/e1","course_member_id":"m1",'
        f'"version_identifier":"{tag}-%d-%d"}}\', n, math.random(1, 1000000000))\n'
        f'  return wrk.format("POST", "/api/tests", {{["Content-Type"]="application/json",'
        f' ["Authorization"]="Basic {auth}"}}, body)\n'
        'end\n'
    )  # fmt: skip
    return script


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--legs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16, help="for the submit runs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with environment() as (env, data):
        seed(env, data)
        seed_legs(env, args.legs)
        servers: list[Server] = []
        try:
            uncached = start("uncached", "gateway.api.app:create_app", "/metrics",
                             {**env, "GATEWAY_METRICS_CACHE_SECONDS": "0"}, data / "m0", servers)  # fmt: skip
            cached = start("cached", "gateway.api.app:create_app", "/metrics", env, data / "m5", servers)
            print(f"/metrics with {args.legs} legs in the store ({args.legs // 100} open), one connection:")
            scrape = {}
            for server in (uncached, cached):
                measured(server, f"{server.url}/metrics", 2, 1)  # warm-up
                rps, latency, cpu = measured(server, f"{server.url}/metrics", args.duration, 1)
                scrape[server.name] = latency
                print(f"  {server.name:9} snapshot: mean {latency:6.2f} ms, {rps:7.1f} scrapes/s, "
                      f"server CPU {cpu:.2f} ms/scrape")  # fmt: skip
            for server in (uncached, cached):
                stop(server)
            servers.clear()
            ok = scrape["uncached"] <= SCRAPE_GOAL_MS
            print(f"  goal <= {SCRAPE_GOAL_MS:.0f} ms every scrape uncached: {'met' if ok else 'NOT met'}")

            off = start("metrics-off", "gateway.api.app:create_app", "/api/tests",
                        {**env, "GATEWAY_METRICS_ENABLED": "false"}, data / "off", servers)  # fmt: skip
            on = start("metrics-on", "gateway.api.app:create_app", "/api/tests", env, data / "on", servers)
            figures: dict[str, list[tuple[float, float, float]]] = {"metrics-off": [], "metrics-on": []}
            for server in (off, on):  # warm-up: pools, login cache, catalog cache
                measured(server, server.url, 2, args.connections, submit_script(data, f"w{server.name}"))
            for n in range(args.rounds):
                for server in (off, on):
                    script = submit_script(data, f"r{n}{server.name}{uuid.uuid4().hex[:4]}")
                    result = measured(server, server.url, args.duration, args.connections, script)
                    figures[server.name].append(result)
                    print(f"round {n + 1} {server.name:11}: {result[0]:7.1f} req/s, mean {result[1]:6.2f} ms, "
                          f"server CPU {result[2]:.2f} ms/request")  # fmt: skip
        finally:
            for server in servers:
                stop(server)

    med = {name: [statistics.median(col) for col in zip(*rows, strict=True)] for name, rows in figures.items()}
    (frps, flat, fcpu), (nrps, nlat, ncpu) = med["metrics-off"], med["metrics-on"]
    print(f"median of {args.rounds} rounds, {args.connections} connections, {args.duration}s each")
    print(f"metrics off: {frps:7.1f} req/s, mean {flat:.2f} ms, CPU {fcpu:.2f} ms/request")
    print(f"metrics on:  {nrps:7.1f} req/s, mean {nlat:.2f} ms, CPU {ncpu:.2f} ms/request")
    ratio = ncpu / fcpu
    print(f"ratio on/off: CPU per request {ratio:.3f}, throughput off/on {frps / nrps:.3f}, latency {nlat / flat:.3f}")
    print(f"goal CPU ratio <= {SUBMIT_GOAL_RATIO}: {'met' if ratio <= SUBMIT_GOAL_RATIO else 'NOT met'}")


if __name__ == "__main__":
    main()
