"""The shadow decision's cost as open shadow legs pile up: canary 50 % + shadow vs no migration, per backlog.

Issue 29 saw the canary's submit grow from 0.99× to 1.68× the no-migration submit (2.53× at one connection) over
three rounds as unfinished shadow legs accumulated. This bench makes the backlog itself the variable and counts
the work per request, not only the time:

- its own PostgreSQL cluster (`tests.support.pg_cluster`, with `pg_stat_statements`) and its own Redis server,
  so the statements it counts are the gateway's alone;
- the API as deployed (one uvicorn process, no reconciler: the shadow legs stay open, as in the issue's run),
  the catalog of `bench/bench_shadow.py` (a content at canary 50 % to Prefect with shadow fraction 1, the member
  outside the canary so Celery answers both variants);
- at each backlog (default 0, 5,000 and 20,000 open shadow legs of the canary's content, added in SQL), wrk at
  one connection for each variant, interleaved, then per request: statements, shared buffers touched, rows
  returned (`pg_stat_statements`), the API's and PostgreSQL's CPU (psutil), p50; and the ratio canary/none.

Flat means the same statements and buffers per request at every backlog.

    PYTHONPATH=. .venv/bin/python bench/bench_shadow_backlog.py [--backlogs 0 5000 20000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench.bench_shadow as shadow  # noqa: E402
import bench.bench_submit as submit  # noqa: E402
from bench.loadgen import ServiceCpu, private_redis, run_wrk  # noqa: E402
from tests.support.pg_cluster import pg_cluster  # noqa: E402

DATABASE = "backlog"
STATEMENTS = "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"

ADD_BACKLOG = """
WITH r AS (
  INSERT INTO result (id, submit, course_member_id, course_content_id, execution_backend_id, test_system_id, result,
                      version_identifier, status, version, created_at, updated_at)
  SELECT 'bl-' || g, false, 'm2', %(content)s, (SELECT id FROM execution_backend LIMIT 1), 'blp-' || g, 0,
         'bl-' || g, 3, 0, now(), now()
  FROM generate_series(%(start)s, %(stop)s - 1) g RETURNING id)
INSERT INTO leg (id, result_id, role, engine, task_name, phase, finished, spec, routing, created_at, updated_at,
                 dispatch_state, dispatch_attempts, dispatch_faults, infra_retries, compare_due, next_attempt_at,
                 deadline)
SELECT 'sh-' || substr(r.id, 4), r.id, 'shadow', 'prefect', 't', 'queued', false, '{}', '{}', now(), now(),
       'pending', 0, 0, 0, false, now() + interval '1 hour', now() + interval '1 hour'
FROM r;
ANALYZE leg;
ANALYZE result;
"""


def statements(cur: Any) -> tuple[int, int, int]:
    """(calls, shared buffers touched, rows) of this database's statements since the last reset."""
    cur.execute(
        "SELECT coalesce(sum(calls), 0), coalesce(sum(shared_blks_hit + shared_blks_read), 0), "
        "coalesce(sum(rows), 0) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
        "WHERE datname = current_database()) AND query NOT LIKE '%%pg_stat_statements%%'"
    )
    calls, buffers, rows = cur.fetchone()
    return int(calls), int(buffers), int(rows)


def measure(server: Any, cur: Any, services: ServiceCpu, payload: str, seconds: int) -> dict[str, float]:
    cur.execute("SELECT pg_stat_statements_reset()")
    pg_before, _ = services.read()
    got = run_wrk(server.url, "/api/tests", server.process.pid, connections=1, seconds=seconds, body=payload,
                  auth=shadow.AUTH)  # fmt: skip
    if got.errors:
        raise RuntimeError(f"{got.errors} errors\n{server.log_tail()}")
    pg_after, _ = services.read()
    calls, buffers, rows = statements(cur)
    n = max(got.requests, 1)
    pg_ms = 1000 * (pg_after - pg_before) / n
    return {"requests": got.requests, "statements": calls / n, "buffers": buffers / n, "rows": rows / n,
            "api_cpu": got.cpu_ms_per_request, "pg_cpu": pg_ms, "p50": got.p50_ms}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlogs", type=int, nargs="+", default=[0, 5_000, 20_000])
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(pg_cluster(options=STATEMENTS))
        port, _redis = stack.enter_context(private_redis())
        submit.PG.update(port=pg.port)
        admin = psycopg2.connect(dbname="postgres", **submit.PG)
        admin.autocommit = True
        admin.cursor().execute(f"CREATE DATABASE {DATABASE}")
        data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(pg.port), "POSTGRES_DB": DATABASE,
               "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_DB": "0",
               "GATEWAY_RECONCILE_IN_API": "false"}  # fmt: skip
        submit.seed(env, data)
        member = shadow.seed_shadow(env, data)
        conn = psycopg2.connect(dbname=DATABASE, **submit.PG)
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("CREATE EXTENSION pg_stat_statements")
        servers: list[Any] = []
        stack.callback(lambda: [submit.stop(s) for s in servers])
        server = submit.start("gateway", "gateway.api.app:create_app", "/api/tests", env, data / "gw", servers)
        services = ServiceCpu(DATABASE, None, dict(submit.PG))
        variants = {"no migration": "w1/e1", "canary 50%": shadow.CUTOVER_DIR}
        for directory in variants.values():  # warm-up: pools, caches, the first count
            run_wrk(server.url, "/api/tests", server.process.pid, connections=1, seconds=2,
                    body=shadow.body(directory, member), auth=shadow.AUTH)  # fmt: skip
        have = 0
        print("| open shadow legs | variant | statements/req | buffers/req | rows/req | API CPU ms/req | "
              "PostgreSQL CPU ms/req | p50 ms |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        ratios = []
        for backlog in sorted(args.backlogs):
            if backlog > have:
                cur.execute(ADD_BACKLOG, {"content": shadow._content_id(shadow.CUTOVER_DIR), "start": have,
                                          "stop": backlog})  # fmt: skip
                have = backlog
            got = {}
            for name, directory in variants.items():
                got[name] = m = measure(server, cur, services, shadow.body(directory, member), args.seconds)
                print(f"| {backlog} | {name} | {m['statements']:.2f} | {m['buffers']:.1f} | {m['rows']:.2f} | "
                      f"{m['api_cpu']:.2f} | {m['pg_cpu']:.2f} | {m['p50']:.2f} |", flush=True)  # fmt: skip
            c, r = got["canary 50%"], got["no migration"]
            cpu = (c["api_cpu"] + c["pg_cpu"]) / (r["api_cpu"] + r["pg_cpu"])
            ratios.append((backlog, c["p50"] / r["p50"], cpu, c["buffers"] / max(r["buffers"], 1e-9)))
        for backlog, p50, cpu, buffers in ratios:
            print(
                f"canary/no migration at {backlog} open shadow legs: p50 {p50:.2f}, API + PostgreSQL CPU/req "
                f"{cpu:.2f}, buffers/req {buffers:.2f}"
            )
    print(f"load average {os.getloadavg()[0]:.2f} (a shared 2-core machine)")


if __name__ == "__main__":
    main()
