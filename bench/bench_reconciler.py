"""One reconciler cycle over many in-flight legs (10,000 by default) on PostgreSQL with the Celery adapter.

Legs and their rows are inserted directly (SENT, deadline far away); half of them have a STARTED row in
`celery_taskmeta`, the other half none (still queued), so every cycle reads every leg and nothing changes: the
deadline-day steady state. After one warm-up tick (it records RUNNING on the started half), each round times
one `Reconciler.tick()` and, interleaved with it, its reference: one `CeleryAdapter.poll` of all the ids (the
engine read alone, no gateway work). Prints the medians, the ratio, and the CPU the tick used in this process.

    .venv/bin/python bench/bench_reconciler.py [--legs 10000] [--rounds 5] [--batch N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from celery.backends.database.models import TaskExtended  # noqa: E402
from sqlalchemy import create_engine, insert  # noqa: E402

from backends.celery.adapter import CeleryAdapter  # noqa: E402
from bench.bench_submit import environment, seed  # noqa: E402
from common.legacy import ResultStatus  # noqa: E402
from gateway.jobs.bootstrap import freeze_startup_heap, start_gateway  # noqa: E402
from gateway.legs.machine import new_leg  # noqa: E402
from gateway.legs.states import DispatchState, LegRole  # noqa: E402
from gateway.store.models import Leg, Result, utcnow  # noqa: E402
from tests.support.celery_worker import settings_from_env  # noqa: E402


def rows_and_legs(count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    now = utcnow()
    rows, legs = [], []
    for i in range(count):
        row_id, leg_id = str(uuid.uuid4()), str(uuid.uuid4())
        rows.append({
            "id": row_id, "submit": False, "course_member_id": "m1", "course_content_id": "cc",
            "execution_backend_id": None, "test_system_id": leg_id, "result": 0.0, "version_identifier": f"v{i}",
            "status": int(ResultStatus.SCHEDULED), "version": 0, "created_at": now, "updated_at": now,
        })  # fmt: skip
        leg = new_leg(
            leg_id=leg_id, result_id=row_id, role=LegRole.PRIMARY, engine="celery", task_name="student_testing",
            spec={"kind": "student_testing", "params": {}}, routing=None, now=now, due_at=now,
        )  # fmt: skip
        leg.update(dispatch_state=DispatchState.SENT.value, next_attempt_at=None, engine_run_id=leg_id,
                   dispatched_at=now, deadline=now + timedelta(days=1), dispatch_attempts=1)  # fmt: skip
        legs.append(leg)
    return rows, legs


def fill(database_url: str, rows: list[dict[str, Any]], legs: list[dict[str, Any]]) -> None:
    engine = create_engine(database_url)
    TaskExtended.metadata.create_all(engine)
    started = [{"task_id": leg["id"], "status": "STARTED", "date_done": utcnow()} for leg in legs[::2]]
    with engine.begin() as conn:
        for table, values in ((Result.__table__, rows), (Leg.__table__, legs), (TaskExtended.__table__, started)):
            for start in range(0, len(values), 2000):
                conn.execute(insert(table), values[start : start + 2000])
    engine.dispose()


async def bench(settings: Any, ids: list[str], rounds: int, batch: int | None) -> None:
    state = start_gateway(settings)
    freeze_startup_heap()  # as the API's lifespan and `gateway reconcile` do
    adapter = state.dispatcher.adapter("celery")
    assert isinstance(adapter, CeleryAdapter)
    if batch is not None:
        state.reconciler.batch_size = batch
    batch = state.reconciler.batch_size
    try:
        warm = await state.reconciler.tick()
        print(f"warm-up tick: polled {warm.polled} legs in {warm.batches} batches, finished {warm.finished}")
        ticks, polls, cpus = [], [], []
        for n in range(rounds):
            cpu0, t0 = time.process_time(), time.perf_counter()
            report = await state.reconciler.tick()
            ticks.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - cpu0)
            assert report.polled == len(ids) and report.finished == 0, report
            t0 = time.perf_counter()
            states = await asyncio.to_thread(adapter.poll, ids)
            polls.append(time.perf_counter() - t0)
            assert len(states) == len(ids)
            print(f"round {n + 1}: tick {1000 * ticks[-1]:.0f} ms (CPU {1000 * cpus[-1]:.0f} ms), "
                  f"poll of all ids {1000 * polls[-1]:.0f} ms", flush=True)  # fmt: skip
    finally:
        await state.close()
    tick, poll, cpu = statistics.median(ticks), statistics.median(polls), statistics.median(cpus)
    print(f"\nmedian of {rounds} rounds, {len(ids)} in-flight legs, batches of {batch}:")
    print(f"reconciler cycle {1000 * tick:.0f} ms (gateway process CPU {1000 * cpu:.0f} ms); "
          f"reference, one adapter poll of all ids {1000 * poll:.0f} ms; ratio {tick / poll:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--legs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="page size (default: the reconciler's own)")
    args = parser.parse_args()
    with environment() as (env, data):
        seed(env, data)
        settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)})
        rows, legs = rows_and_legs(args.legs)
        fill(settings.database_url(), rows, legs)
        asyncio.run(bench(settings, [leg["id"] for leg in legs], args.rounds, args.batch))


if __name__ == "__main__":
    main()
