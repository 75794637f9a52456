"""The primary's end-to-end time with a shadow leg vs without: submit → primary leg COMPLETED, same run.

One real Celery worker (Redis broker, PostgreSQL results, concurrency 2) runs the primary: the no-op job. The
gateway path is the submit path's (row and legs inserted in one statement, the primary sent, its send recorded)
and the reconciler runs as in `gateway reconcile` (ticks every second, the completion feed, the outbox listener).
Two variants, one job at a time, interleaved round by round:

- `shadow off`: the row and its primary leg;
- `shadow on`: the same plus a shadow leg on Celery (the A/A kind: the same engine, so it competes with the
  primary for the same worker), due at once: the primary's recorded send raises the NOTIFY (migration 0008) and
  the reconciler sends the shadow. The shadow's job is a `student_testing` with an empty test job, which the
  worker ends at once (failed): what is measured is the shadow's dispatch and bookkeeping beside the primary, not a
  long shadow run.

"Done" is the primary leg's finish (a finish hook of the leg state machine, `state.finish_hooks`, inside the
transaction that writes the row). By default the next job starts once this job's shadow has ended too, so each
primary is timed beside its own shadow; `--back-to-back` starts it as soon as the primary ended, so the previous
job's shadow (its send, its run, its completion) overlaps the next primary in the same process. Prints p50/p99 per
variant, the ratio on/off, and the process's CPU per job.

    .venv/bin/python bench/bench_shadow_e2e.py [--jobs 40] [--rounds 3] [--back-to-back]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.celery import names  # noqa: E402
from backends.celery.adapter import CeleryAdapter  # noqa: E402
from bench.bench_reconciler import rows_and_legs  # noqa: E402
from bench.bench_submit import environment, seed  # noqa: E402
from gateway.jobs.bootstrap import start_gateway  # noqa: E402
from gateway.legs import machine  # noqa: E402
from gateway.legs.states import DispatchState, LegRole  # noqa: E402
from gateway.runtime import GatewayState  # noqa: E402
from gateway.store import leg_writer  # noqa: E402
from gateway.store.models import new_id, utcnow  # noqa: E402
from gateway.store.runs import insert_run  # noqa: E402
from tests.support.celery_worker import base_env, running_worker, settings_from_env  # noqa: E402

Waiters = dict[str, asyncio.Event]


async def one_job(state: GatewayState, waiters: Waiters, shadow: bool, settle: bool) -> float:
    (row,), (leg,) = rows_and_legs(1)
    row["version_identifier"] = leg["id"]  # a new commit every time
    now = utcnow()
    # As on the submit path: the request sends it; the outbox would take over only after the grace.
    leg.update(dispatch_state=DispatchState.PENDING.value, dispatch_attempts=0, deadline=None, dispatched_at=None,
               next_attempt_at=now + timedelta(seconds=15))  # fmt: skip
    shadows = []
    if shadow:
        shadow_leg = machine.new_leg(
            leg_id=new_id(), result_id=row["id"], role=LegRole.SHADOW, engine="celery",
            task_name=leg["task_name"], spec={**leg["spec"], "params": {"test_job": {}}, "shadow": True},
            routing={"experiment": "aa", "primary_leg": leg["id"]}, now=now, due_at=now,
            deadline=now + timedelta(minutes=10),
        )  # fmt: skip
        leg["routing"] = {"shadow": {"legs": [shadow_leg["id"]]}}
        shadows.append({**dict.fromkeys(leg), **shadow_leg})  # the same columns as the primary's (one statement)
        waiters[shadow_leg["id"]] = asyncio.Event()
    else:
        leg["routing"] = {"shadow": {"skipped": "shadowing_off"}}
    waiters[leg["id"]] = done = asyncio.Event()
    adapter = state.dispatcher.adapter("celery")
    assert isinstance(adapter, CeleryAdapter)
    started = time.perf_counter()
    assert await insert_run(state.engine, row, leg, *shadows)
    await asyncio.get_running_loop().run_in_executor(None, adapter.send, names.NOOP, {}, leg["id"])
    sent = utcnow()
    await leg_writer.record_sent(state.engine, leg["id"], leg["id"], sent, sent + timedelta(days=1))
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - started
    if settle:  # the next job starts once this one's shadow ended: each primary is timed beside its own shadow
        for shadow_leg in shadows:
            waiters.setdefault(shadow_leg["id"], asyncio.Event())
            await asyncio.wait_for(waiters[shadow_leg["id"]].wait(), 60)
    return elapsed


async def bench(settings: Any, jobs: int, rounds: int, settle: bool) -> None:
    waiters: Waiters = {}

    def finished(leg: machine.FinishedLeg) -> list[Any]:
        if (event := waiters.get(leg.leg.id)) is not None:
            event.set()
        return []

    state = start_gateway(settings)
    state.finish_hooks.connect("bench", finished)
    stop = asyncio.Event()
    loop = asyncio.create_task(state.reconciler.run(stop))
    times: dict[str, list[float]] = {"shadow off": [], "shadow on": []}
    cpu: dict[str, float] = {"shadow off": 0.0, "shadow on": 0.0}
    try:
        assert await state.reconciler.completions.wait_following("celery", 30)
        await asyncio.wait_for(state.reconciler.listener.listening.wait(), 30)
        for _ in range(3):  # warm-up: connections, the worker's pool
            await one_job(state, waiters, True, settle)
        for n in range(rounds):
            medians = {}
            for variant in times:
                before = time.process_time()
                got = [await one_job(state, waiters, variant == "shadow on", settle) for _ in range(jobs)]
                cpu[variant] += time.process_time() - before
                times[variant].extend(got)
                medians[variant] = statistics.median(got)
                print(f"round {n + 1} {variant:10}: p50 {1000 * medians[variant]:7.1f} ms", flush=True)
            print(f"round {n + 1}: p50 shadow on / shadow off {medians['shadow on'] / medians['shadow off']:.2f}")
    finally:
        stop.set()
        await loop
        await state.close()

    print(f"\n{jobs} no-op jobs one at a time per variant and round, {rounds} interleaved rounds (all jobs pooled); "
          f"load average {os.getloadavg()[0]:.2f} (a shared 2-core machine)")  # fmt: skip
    off = statistics.median(times["shadow off"])
    for variant, values in times.items():
        values.sort()
        p50, p99 = statistics.median(values), values[min(len(values) - 1, int(0.99 * len(values)))]
        per_job = 1000 * cpu[variant] / len(values)
        print(f"{variant:10}: p50 {1000 * p50:7.1f} ms, p99 {1000 * p99:7.1f} ms, p50 / shadow off {p50 / off:.2f}, "
              f"gateway process CPU {per_job:.2f} ms/job (API path + reconciler)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--back-to-back",
        action="store_true",
        help="start the next job as soon as the primary ended (its shadow still in flight beside the next primary)",
    )
    args = parser.parse_args()
    with environment() as (env, data):
        seed(env, data)
        env = base_env({**env, "GATEWAY_RECONCILE_INTERVAL": "1.0"}, data)
        settings = settings_from_env(env)
        queues = (names.DEFAULT, names.HIGH_PRIORITY)  # the no-op's queue and student_testing's
        with running_worker(env, queues=queues, concurrency=2, log_dir=data):
            asyncio.run(bench(settings, args.jobs, args.rounds, not args.back_to_back))


if __name__ == "__main__":
    main()
