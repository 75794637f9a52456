"""One cutover gate evaluation over 1,000,000 comparisons on PostgreSQL (goal: ≤ 1 s), beside the evidence read
from the rows as it was before the tally (the same run, the same rows).

    PYTHONPATH=. .venv/bin/python bench/bench_cutover_gate.py [--rows 1000000] [--rounds 5] [--explain] [--no-scan]

Creates a dedicated scratch database on the local PostgreSQL (TEST_POSTGRES_* or 127.0.0.1:5432, user postgres),
upgrades it, sets a content migration in `canary`, inserts the comparison rows of its window, each with its
primary leg routed by the stage (the gate weighs only those), in the database itself (`generate_series`, seeded:
the same rows every run; 95 % matches, the rest mismatches, noise, infra errors, timeouts and compare errors, run
times 2-9 s), plus as many rows of another content (outside the window), then `VACUUM ANALYZE`s the tables as
autovacuum would. Each round times `evaluate_one` (the tally of the stage's comparisons, both engines' p99 by rank,
the accepted mismatches, the parity check, the unstarted legs, the record of the evaluation) and, unless
`--no-scan`, `scanned_evidence` (the same evidence aggregated over the window's rows: the gate before migration
0016), and checks that both give the same evidence. Prints the medians, the spread, and (`--explain`) each
query's plan with its buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
import uuid
from typing import Any

import psycopg2
from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql

from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope, Stage
from gateway.jobs import cutover_changes as service
from gateway.jobs import cutover_gates as gates
from gateway.store.catalog import load_catalog
from gateway.store.db import make_async_engine, make_sessionmaker
from gateway.store.migrate import upgrade
from gateway.store.models import GateTally
from tests.fast.conftest import catalog
from tests.support.celery_worker import settings_from_env

CONTENT = "cc-prefect"
# The window's rows, made by PostgreSQL from a seeded generator (setseed): the same rows every run. Every
# comparison of the window has its primary leg, routed by the migration's current stage and config version (the
# gate weighs only those: `gateway.jobs.cutover_gates.routed_by`); the other content's rows have none.
FILL = """
SELECT setseed(0.29);
INSERT INTO result (id, submit, course_content_id, version_identifier, status, result, version, created_at,
                    updated_at)
VALUES ('r-bench', false, %(content)s, 'b', 0, 0, 0, now(), now()), ('r-other', false, 'cc-other', 'b', 0, 0, 0,
        now(), now());
INSERT INTO leg (id, result_id, role, engine, task_name, phase, finished, spec, routing, created_at, updated_at,
                 dispatch_state, dispatch_attempts, dispatch_faults, infra_retries, compare_due)
SELECT 'p-' || g, 'r-bench', 'primary', 'prefect', 'student_testing', 'succeeded', true, '{}', %(routing)s::json,
       now(), now(), 'sent', 1, 0, 0, false
FROM generate_series(2, %(total)s, 2) g;
INSERT INTO comparison (id, result_id, primary_leg_id, shadow_leg_id, kind, course_content_id, primary_engine,
                        shadow_engine, outcome, side, primary_run_seconds, shadow_run_seconds, difference_count,
                        created_at, routed_scope, routed_stage, routed_version)
SELECT 'c-' || g, CASE WHEN g %% 2 = 0 THEN 'r-bench' ELSE 'r-other' END, 'p-' || g, 's-' || g, 'shadow',
       CASE WHEN g %% 2 = 0 THEN %(content)s ELSE 'cc-other' END, 'prefect', 'celery',
       (ARRAY['match', 'mismatch', 'noise', 'infra_error', 'shadow_timeout', 'compare_error'])[
           CASE WHEN r < 0.95 THEN 1 ELSE 2 + floor((r - 0.95) * 100)::int END],
       'shadow', 2 + 7 * random(), 2 + 7 * random(), 0, now() - interval '1 minute',
       %(scope)s, %(stage)s, %(version)s
FROM (SELECT g, random() AS r FROM generate_series(1, %(total)s) g) s;
"""


def fill(dsn: dict[str, Any], rows: int, config: Any) -> None:
    routing = {"rule": "stage:canary:out_of_bucket", "stage": config.stage.value, "config_scope": config.scope.value,
               "config_scope_id": config.scope_id, "config_version": config.version}  # fmt: skip
    started = time.perf_counter()
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        params = {"content": CONTENT, "total": 2 * rows, "routing": json.dumps(routing),
                  "scope": config.scope.value, "stage": config.stage.value, "version": config.version}  # fmt: skip
        cur.execute(FILL, params)
        cur.execute("VACUUM ANALYZE comparison")
        cur.execute("VACUUM ANALYZE leg")
    conn.close()
    print(f"{2 * rows} comparisons written ({rows} in the window) in {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000, help="comparisons in the window")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--explain", action="store_true", help="print each query's plan with its buffers")
    parser.add_argument("--no-scan", action="store_true", help="skip the evidence read from the rows (before 0016)")
    args = parser.parse_args()
    host = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
    port = os.environ.get("TEST_POSTGRES_PORT", "5432")
    user = os.environ.get("TEST_POSTGRES_USER", "postgres")
    name = f"bench_cutover_{uuid.uuid4().hex[:6]}"
    admin = psycopg2.connect(host=host, port=port, user=user, dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        env = {"POSTGRES_HOST": host, "POSTGRES_PORT": port, "POSTGRES_USER": user, "POSTGRES_DB": name}
        # The scan (before 0016) can take longer than the service's 15 s statement limit on a loaded machine.
        timeout = {"GATEWAY_DB_COMMAND_TIMEOUT_SECONDS": "600"}
        settings = settings_from_env({**env, **timeout, "GATEWAY_DATA_DIR": f"/tmp/{name}"})
        upgrade(settings)
        load_catalog(catalog(), settings)
        dsn = {"host": host, "port": port, "user": user, "dbname": name}
        asyncio.run(run(settings, dsn, args.rows, args.rounds, args.explain, not args.no_scan))
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"load average {os.getloadavg()[0]:.2f} (a shared 2-core machine)")


async def explain(sessions: Any, config: Any, rows: int) -> None:
    """The plans of the gate's queries as PostgreSQL runs them (ANALYZE, BUFFERS): the tally's and the p99's (one
    engine, the rank of a window of `rows` comparisons), and the scan's that it replaces."""
    where = gates.evidence_window(config, config.stage_since)
    m = rows - math.ceil(0.99 * rows) + 1
    statements = {
        "tally": select(GateTally).where(GateTally.scope == config.scope.value, GateTally.scope_id == config.scope_id,
                                         GateTally.stage == config.stage.value, GateTally.version == config.version),
        f"p99 of the new engine by rank ({m}th largest)": gates.nth_largest_run(config, config.new_engine, None, m),
        "scan: grouped counts": gates.grouped_counts(where),
        "scan: p99 of both engines": gates.p99_statement(where, config.old_engine, config.new_engine),
    }  # fmt: skip
    async with sessions() as session:
        for title, stmt in statements.items():
            sql = stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
            plan = (await session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"))).scalars().all()
            print(f"--- {title}\n" + "\n".join(plan))


def spread(name: str, times: list[float]) -> str:
    return f"{name}: median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s"


async def run(settings: object, dsn: dict[str, Any], rows: int, rounds: int, show_plans: bool, scan: bool) -> None:
    engine = make_async_engine(settings)  # type: ignore[arg-type]
    sessions = make_sessionmaker(engine)
    await service.change_migration(sessions, Scope.CONTENT, CONTENT, Action.SET, "bench", new_engine="celery",
                                   stage=Stage.CANARY, percentage=25)  # fmt: skip
    # The stage began before the rows: the whole window is evidence.
    async with sessions() as session, session.begin():
        await session.execute(text("UPDATE cutover_migration SET stage_since = now() - interval '1 hour'"))
    _ref, config = await service.current(sessions, Scope.CONTENT, CONTENT)
    assert config is not None
    await asyncio.to_thread(fill, dsn, rows, config)
    if show_plans:
        await explain(sessions, config, rows)
    times: list[float] = []
    scanned: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        run = await gates.evaluate_one(sessions, config, dry_run=False)
        times.append(time.perf_counter() - start)
        if scan:
            start = time.perf_counter()
            async with sessions() as session:
                before = await gates.scanned_evidence(session, config, config.stage_since)
            scanned.append(time.perf_counter() - start)
            if before != run.evaluation.evidence:
                raise SystemExit(f"the tally and the scan disagree:\n{run.evaluation.evidence}\n{before}")
    await engine.dispose()
    evidence = run.evaluation.evidence
    print(f"evaluation over {rows} comparisons ({evidence.comparable} comparable, p99 {evidence.old_p99_seconds} / "
          f"{evidence.new_p99_seconds} s) on PostgreSQL, {rounds} rounds; goal <= 1 s")  # fmt: skip
    print(spread("  evaluate_one (tally)", times))
    if scan:
        print(spread("  the evidence read from the rows (scanned_evidence, before 0016)", scanned))
        print("  both gave the same evidence in every round")


if __name__ == "__main__":
    main()
