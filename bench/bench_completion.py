"""No-op job: submit → row COMPLETED through the gateway with no status reads, against a raw Celery round trip.

One real worker (Redis broker, PostgreSQL results, `gateway worker start`, concurrency 2). Three variants, one
job at a time, interleaved round by round:

- `raw-celery` (the reference): `send_task` of the no-op, done when the result store's row is committed (seen
  through its NOTIFY, the fastest a client can learn it);
- `gateway-push`: the gateway's durable path for a Celery job: row and leg inserted as the submit path commits
  them (under the in-process relay's lease, handed over to it), the relay sends the task and records the send, done
  when the reconciler closed the leg and wrote the row; the reconciler runs as in the API (ticks every
  `GATEWAY_RECONCILE_INTERVAL`, 1 s, the outbox wake-ups and listener, the completion feed). The relay sends
  through `NoopCelery`, the Celery adapter with the no-op task in place of the job's (bench only);
- `gateway-poll`: the same with the completion feed off (ticks and outbox wake-ups alone): what completion cost
  before it was pushed.

"Done" for the gateway is a finish hook of the leg state machine (`state.finish_hooks`), which runs inside the
transaction that writes the row, just before its commit. Prints p50/p99 per variant and the ratio to raw.

    .venv/bin/python bench/bench_completion.py [--jobs 40] [--rounds 3] [--variants raw-celery gateway-push]

`--variants` leaves out the others (`gateway-poll` costs about a reconcile interval per job); `raw-celery`, the
reference, is always run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.celery import names  # noqa: E402
from backends.celery.adapter import CeleryAdapter  # noqa: E402
from backends.interface import EngineAdapter, JobSpec  # noqa: E402
from backends.registry import make_adapter  # noqa: E402
from bench.bench_reconciler import rows_and_legs  # noqa: E402
from bench.bench_submit import environment, seed  # noqa: E402
from common.settings import Settings  # noqa: E402
from gateway.engines.dispatcher import Dispatcher, SendBy  # noqa: E402
from gateway.jobs.bootstrap import start_gateway  # noqa: E402
from gateway.jobs.submit_plan import DUE_AFTER  # noqa: E402
from gateway.legs import machine  # noqa: E402
from gateway.legs.states import DispatchState  # noqa: E402
from gateway.runtime import GatewayState  # noqa: E402
from gateway.store.models import utcnow  # noqa: E402
from gateway.store.runs import insert_run  # noqa: E402
from tests.support.celery_worker import base_env, running_worker, settings_from_env  # noqa: E402

Waiters = dict[str, asyncio.Event]


async def follow(adapter: CeleryAdapter, waiters: Waiters, ready: asyncio.Event) -> None:
    async for ids in adapter.completions():
        ready.set()
        for task_id in ids:
            if (event := waiters.get(task_id)) is not None:
                event.set()


async def raw(adapter: CeleryAdapter, waiters: Waiters) -> float:
    task_id = str(uuid.uuid4())
    waiters[task_id] = done = asyncio.Event()
    started = time.perf_counter()
    await asyncio.to_thread(adapter.send, names.NOOP, {}, task_id)
    await asyncio.wait_for(done.wait(), 30)
    return time.perf_counter() - started


class NoopCelery(CeleryAdapter):
    """The Celery adapter, sending the no-op task under the leg's id whatever the leg's job (bench only)."""

    def submit(self, job: JobSpec, leg_id: str, priority: int = 8) -> str:
        return self.send(names.NOOP, {}, leg_id)


def noop_celery(engine: str, settings: Settings) -> EngineAdapter:
    """`NoopCelery` for the Celery engine, the usual adapter for any other: one completion feed, as deployed (an
    adapter per engine name that all listened to the result store would apply every completion twice)."""
    return NoopCelery(settings) if engine == "celery" else make_adapter(engine, settings)


async def through_gateway(state: GatewayState, waiters: Waiters) -> float:
    (row,), (leg,) = rows_and_legs(1)
    row["version_identifier"] = leg["id"]  # a new commit every time
    # As the submit path commits a Celery job: pending, for the relay (here the one in this process, running:
    # committed under its lease and handed over, `SendBy.HAND_OVER`).
    now = utcnow()
    sender = state.send_by("celery")
    leg.update(dispatch_state=DispatchState.PENDING.value, dispatch_attempts=0, deadline=None, dispatched_at=None,
               engine_run_id=None, next_attempt_at=now + DUE_AFTER[sender], created_at=now, updated_at=now)  # fmt: skip
    waiters[leg["id"]] = done = asyncio.Event()
    started = time.perf_counter()
    assert await insert_run(state.engine, row, leg)  # durable before anything is sent
    if sender is SendBy.HAND_OVER:  # as `gateway.jobs.submit._dispatch` does
        state.reconciler.hand_over(leg)
    else:
        state.reconciler.wake_outbox()
    await asyncio.wait_for(done.wait(), 30)
    return time.perf_counter() - started


async def ticks_and_outbox(state: GatewayState, stop: asyncio.Event) -> None:
    """The reconciler without its completion feed: ticks, outbox wake-ups and the outbox listener."""
    await asyncio.gather(
        state.reconciler.tick_loop(stop),
        state.reconciler.relay.flush_woken(stop),
        state.reconciler.listener.listen(stop),
    )


VARIANTS = ("raw-celery", "gateway-push", "gateway-poll")


async def bench(settings: Any, jobs: int, rounds: int, variants: list[str]) -> None:
    waiters: Waiters = {}  # raw task ids, set by the result store's notices
    legs: Waiters = {}  # gateway leg ids, set by the finish hook

    def finished(leg: machine.FinishedLeg) -> list[Any]:
        if (event := legs.get(leg.leg.id)) is not None:
            event.set()
        return []

    raw_client = CeleryAdapter(settings)
    ready = asyncio.Event()
    feed = asyncio.create_task(follow(raw_client, waiters, ready))
    await asyncio.wait_for(ready.wait(), 30)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS if v == "raw-celery" or v in variants}
    try:
        for _ in range(3):  # warm-up: connections, the worker's pool
            await raw(raw_client, waiters)
        for n in range(rounds):
            medians: dict[str, float] = {}
            for variant in times:
                state = start_gateway(settings, Dispatcher(settings, adapter_factory=noop_celery))
                state.finish_hooks.connect("bench", finished)
                stop = asyncio.Event()
                if variant == "gateway-push":
                    loop = asyncio.create_task(state.reconciler.run(stop))
                    assert await state.reconciler.completions.wait_following("celery", 30)
                elif variant == "gateway-poll":
                    loop = asyncio.create_task(ticks_and_outbox(state, stop))
                try:
                    got = []
                    for _ in range(jobs):
                        if variant == "raw-celery":
                            got.append(await raw(raw_client, waiters))
                        else:
                            got.append(await through_gateway(state, legs))
                    times[variant].extend(got)
                    medians[variant] = statistics.median(got)
                    print(f"round {n + 1} {variant:12}: p50 {1000 * medians[variant]:7.1f} ms", flush=True)
                finally:
                    if variant != "raw-celery":
                        stop.set()
                        await loop
                    await state.close()
            for variant in list(medians)[1:]:
                print(f"round {n + 1}: p50 {variant} / raw-celery {medians[variant] / medians['raw-celery']:.2f}")
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
        raw_client.close()

    print(f"\n{jobs} no-op jobs one at a time per variant and round, {rounds} interleaved rounds (all jobs pooled):")
    ref = statistics.median(times["raw-celery"])
    for variant, values in times.items():
        values.sort()
        p50, p99 = statistics.median(values), values[min(len(values) - 1, int(0.99 * len(values)))]
        print(f"{variant:12}: p50 {1000 * p50:7.1f} ms, p99 {1000 * p99:7.1f} ms, p50 / raw-celery {p50 / ref:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    with environment() as (env, data):
        seed(env, data)
        env = base_env({**env, "GATEWAY_RECONCILE_INTERVAL": "1.0"}, data)
        settings = settings_from_env(env)
        with running_worker(env, queues=(names.DEFAULT,), concurrency=2, log_dir=data):
            asyncio.run(bench(settings, args.jobs, args.rounds, args.variants))


if __name__ == "__main__":
    main()
