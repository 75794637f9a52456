"""One cutover gate evaluation over 100,000 comparisons on PostgreSQL (goal: ≤ 1 s).

    .venv/bin/python bench/bench_cutover_gate.py [--rows 100000] [--rounds 5]

Creates a scratch database on the local PostgreSQL (TEST_POSTGRES_* or 127.0.0.1:5432, user postgres), upgrades
it, sets a content migration in `canary`, bulk-inserts comparison rows in its window (each with a primary leg
routed by that stage and config version: the gate weighs only those), then times
`evaluate_one` (read the window, count, percentiles, record the evaluation) and prints the median.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid

import psycopg2
from sqlalchemy import insert
from sqlalchemy.orm import Session

from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope, Stage
from gateway.jobs import cutover_changes as service
from gateway.jobs import cutover_gates as gates
from gateway.legs.machine import new_leg
from gateway.legs.states import LegRole
from gateway.store.catalog import load_catalog
from gateway.store.db import make_async_engine, make_sessionmaker, make_sync_engine
from gateway.store.migrate import upgrade
from gateway.store.models import Comparison, Leg, Result, new_id, utcnow
from tests.fast.conftest import catalog
from tests.support.celery_worker import settings_from_env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
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
        settings = settings_from_env({**env, "GATEWAY_DATA_DIR": f"/tmp/{name}"})
        upgrade(settings)
        load_catalog(catalog(), settings)
        asyncio.run(run(settings, args.rows, args.rounds))
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run(settings: object, rows: int, rounds: int) -> None:
    engine = make_async_engine(settings)  # type: ignore[arg-type]
    sessions = make_sessionmaker(engine)
    await service.change_migration(sessions, Scope.CONTENT, "cc-prefect", Action.SET, "bench", new_engine="celery",
                                   stage=Stage.CANARY, percentage=25)  # fmt: skip
    _ref, config = await service.current(sessions, Scope.CONTENT, "cc-prefect")
    assert config is not None
    # Every comparison's job was routed by this stage (the gate weighs only those): its primary leg says so.
    routing = {"rule": "stage:canary:out_of_bucket", "stage": config.stage.value, "config_scope": config.scope.value,
               "config_scope_id": config.scope_id, "config_version": config.version}  # fmt: skip
    rng = random.Random(1)
    now = utcnow()
    with Session(make_sync_engine(settings)) as db, db.begin():  # type: ignore[arg-type]
        db.add(Result(id="r-bench", course_content_id="cc-prefect", version_identifier="b", status=0, result=0.0))
        db.flush()
        outcomes = ["match"] * 95 + ["mismatch", "noise", "infra_error", "shadow_timeout", "compare_error"]
        batch = [
            {
                "id": new_id(), "result_id": "r-bench", "primary_leg_id": new_id(), "shadow_leg_id": new_id(),
                "kind": "shadow", "course_content_id": "cc-prefect", "primary_engine": "prefect",
                "shadow_engine": "celery", "outcome": rng.choice(outcomes), "side": "shadow",
                "primary_run_seconds": rng.uniform(2, 9), "shadow_run_seconds": rng.uniform(2, 9),
                "difference_count": 0, "created_at": now,
            }
            for _ in range(rows)
        ]  # fmt: skip
        legs = [
            new_leg(leg_id=c["primary_leg_id"], result_id="r-bench", role=LegRole.PRIMARY, engine="prefect",
                    task_name="student_testing", spec={"kind": "student_testing", "params": {}}, routing=routing,
                    now=now, due_at=now)
            for c in batch
        ]  # fmt: skip
        db.execute(insert(Leg), legs)
        db.execute(insert(Comparison), batch)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run = await gates.evaluate_one(sessions, config, dry_run=False)
        times.append(time.perf_counter() - start)
    await engine.dispose()
    samples = run.evaluation.evidence.comparable
    print(f"evaluation over {rows} comparisons ({samples} comparable) on PostgreSQL: "
          f"median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s "
          f"({rounds} rounds); goal <= 1 s")  # fmt: skip


if __name__ == "__main__":
    main()
