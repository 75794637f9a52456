"""Prefect figures, each against a reference measured in the same run.

Starts its own Prefect server (SQLite in a temp folder, or PostgreSQL with `--postgres`) and one runner
(`gateway prefect serve --test-flows`), then measures:

- submit latency: `PrefectAdapter.submit` vs the raw httpx `create_flow_run` call (reference);
- end-to-end latency of a no-op run (submit → COMPLETED seen by `poll`), against the no-op in-process;
- end-to-end latency of the example assignment, against the same work run in-process (reference);
- runs/s: N no-op runs submitted at once, until all are COMPLETED.
- `--breakdown N` (alone): N no-op runs one at a time, each followed by the adapter's completion feed (Prefect's
  event stream), and where its time went from Prefect's own state timestamps: created → PENDING (the runner's
  poll picked it up), PENDING → RUNNING (the `python -m prefect.engine` subprocess started, imported Prefect and
  the flow module), RUNNING → COMPLETED (the flow's body), COMPLETED → the feed's notice at the gateway's adapter
  (event delivery), and submit → notice in all.
- `--routes N` (alone): the bundled example (passing student), submit → final seen by the adapter's completion
  feed, through the Prefect route (this server and runner) against the Celery route (a real worker, `gateway
  worker start`, concurrency 2, on a scratch PostgreSQL database and a Redis server of the bench's own), in N
  interleaved rounds of `--jobs` jobs one at a time per route (the order alternating per round); every job is
  checked to have succeeded with score 1.0. Prints each round's medians and their ratio Prefect / Celery.

Run: `.venv/bin/python bench/bench_prefect.py [--runs 20] [--postgres] [--breakdown 10] [--routes 3 --jobs 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.celery.adapter import CeleryAdapter  # noqa: E402
from backends.examples import materialize_example  # noqa: E402
from backends.interface import EngineAdapter, JobSpec, LegPhase, TaskKind  # noqa: E402
from backends.prefect.adapter import PrefectAdapter  # noqa: E402
from backends.work.report import report_score  # noqa: E402
from bench.bench_submit import environment, seed  # noqa: E402
from common.settings import Settings  # noqa: E402
from tests.support.celery_worker import base_env, running_worker, settings_from_env  # noqa: E402
from tests.support.prefect_server import (  # noqa: E402
    prefect_process_env,
    running_prefect_server,
    running_runner,
    wait_until,
)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.1f} ms (min {min(values) * 1000:.1f}, n={len(values)})"


def until_done(adapter: PrefectAdapter, legs: list[str], timeout: float = 300.0) -> None:
    def done() -> bool:
        states = adapter.poll(legs)
        bad = [s for s in states.values() if s.phase.is_final and s.phase is not LegPhase.SUCCEEDED]
        if bad:
            raise RuntimeError(f"run failed: {bad[0].native} {bad[0].error}")
        return all(s.phase is LegPhase.SUCCEEDED for s in states.values())

    wait_until(done, f"{len(legs)} runs", timeout)


STEPS = ("created → PENDING (runner poll)", "PENDING → RUNNING (subprocess, imports)", "RUNNING → COMPLETED (flow)",
         "COMPLETED → feed notice", "submit → feed notice")  # fmt: skip


async def breakdown(adapter: PrefectAdapter, raw: httpx.Client, job: JobSpec, runs: int) -> None:
    """One no-op run at a time, seen final through the completion feed; each step from Prefect's timestamps."""
    feed = adapter.completions()
    assert await anext(feed) == []
    steps: dict[str, list[float]] = {step: [] for step in STEPS}
    try:
        for _ in range(runs):
            leg = f"bench-{uuid.uuid4()}"
            submitted = datetime.now(UTC)
            run_id = await asyncio.to_thread(adapter.submit, job, leg)
            async with asyncio.timeout(120):
                while leg not in await anext(feed):
                    pass
            noticed = datetime.now(UTC)
            states = raw.get("flow_run_states/", params={"flow_run_id": run_id}).json()
            at = {s["type"]: datetime.fromisoformat(s["timestamp"].replace("Z", "+00:00")) for s in states}
            run = raw.get(f"flow_runs/{run_id}").json()
            created = datetime.fromisoformat(run["created"].replace("Z", "+00:00"))
            marks = (created, at["PENDING"], at["RUNNING"], at["COMPLETED"], noticed)
            for step, (a, b) in zip(STEPS, zip(marks, marks[1:], strict=False), strict=False):
                steps[step].append((b - a).total_seconds())
            steps[STEPS[-1]].append((noticed - submitted).total_seconds())
    finally:
        await feed.aclose()
    print(f"where a no-op Prefect run's time goes ({runs} runs one at a time, medians; min–max):")
    for step, values in steps.items():
        print(f"  {step:42} {statistics.median(values):6.2f} s  ({min(values):.2f}–{max(values):.2f})")


async def follow(feed: AsyncIterator[list[str]], waiters: dict[str, asyncio.Event], ready: asyncio.Event) -> None:
    """Sets the waiter of every leg a completion feed names; `ready` once the feed listens (its first batch)."""
    async for legs in feed:
        ready.set()
        for leg in legs:
            waiters.setdefault(leg, asyncio.Event()).set()


async def one_job(adapter: EngineAdapter, job: JobSpec, waiters: dict[str, asyncio.Event]) -> float:
    """Submit → the leg named by the engine's completion feed (seconds); then checks it succeeded with score 1."""
    leg = f"bench-{uuid.uuid4()}"
    waiters[leg] = done = asyncio.Event()
    started = time.perf_counter()
    await asyncio.to_thread(adapter.submit, job, leg)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - started
    result = (await asyncio.to_thread(adapter.results, [leg]))[leg]
    if result.phase is not LegPhase.SUCCEEDED or result.report is None or report_score(result.report) != 1.0:
        raise RuntimeError(f"{type(adapter).__name__}: the example ended {result.phase} {result.error}")
    return elapsed


async def compare_routes(adapters: dict[str, EngineAdapter], job: JobSpec, rounds: int, jobs: int) -> None:
    """The example through each route, one job at a time, in interleaved rounds; prints the ratio Prefect/Celery."""
    waiters: dict[str, asyncio.Event] = {}
    followers = []
    for adapter in adapters.values():
        ready = asyncio.Event()
        followers.append(asyncio.create_task(follow(adapter.completions(), waiters, ready)))
        await asyncio.wait_for(ready.wait(), 60)
    times: dict[str, list[float]] = {route: [] for route in adapters}
    try:
        for adapter in adapters.values():  # warm-up: the worker's pool and zygotes, the runner's first flow run
            await one_job(adapter, job, waiters)
        for n in range(rounds):
            order = list(adapters) if n % 2 == 0 else list(reversed(adapters))
            medians = {}
            for route in order:
                got = [await one_job(adapters[route], job, waiters) for _ in range(jobs)]
                times[route].extend(got)
                medians[route] = statistics.median(got)
            print(f"round {n + 1} ({order[0]} first): prefect {medians['prefect']:.3f} s, celery "
                  f"{medians['celery']:.3f} s, ratio prefect/celery {medians['prefect'] / medians['celery']:.2f}",
                  flush=True)  # fmt: skip
    finally:
        for task in followers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    pooled = {route: statistics.median(values) for route, values in times.items()}
    print(f"\nthe example (passing), submit → final seen by the completion feed, {jobs} jobs per route and round, "
          f"{rounds} interleaved rounds (all jobs pooled):")  # fmt: skip
    for route, values in times.items():
        print(
            f"{route:8}: median {pooled[route]:.3f} s (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"
        )
    print(f"ratio prefect/celery (pooled medians): {pooled['prefect'] / pooled['celery']:.2f}")


def routes(prefect: PrefectAdapter, root: Path, rounds: int, jobs: int) -> None:
    """The Celery side of `--routes` (worker, scratch database, own Redis), then `compare_routes`."""
    repos = materialize_example(root / "example")
    job = JobSpec(TaskKind.STUDENT_TESTING, {"test_job": repos.test_job("passing").model_dump(mode="json")})
    with environment() as (env, data):
        seed(env, data)
        worker_env = base_env(env, data / "worker")
        with running_worker(worker_env, concurrency=2, log_dir=data / "worker"):
            celery = CeleryAdapter(settings_from_env(worker_env))
            try:
                asyncio.run(compare_routes({"prefect": prefect, "celery": celery}, job, rounds, jobs))
            finally:
                celery.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--postgres", default=None, help="postgresql+asyncpg://... for the Prefect server")
    parser.add_argument("--breakdown", type=int, default=0, help="only: where N no-op runs' time goes")
    parser.add_argument("--routes", type=int, default=0, help="only: N rounds of the example, Prefect vs Celery")
    parser.add_argument("--jobs", type=int, default=3, help="with --routes: jobs per route and round")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-prefect-"))
    data = root / "gateway-data"
    with running_prefect_server(root / "server", database_url=args.postgres) as api:
        env = prefect_process_env(api, root / "home", {"GATEWAY_DATA_DIR": str(data)})
        (root / "home").mkdir(exist_ok=True)
        with running_runner(env, limit=4, test_flows=True, wait_for=["gateway-noop/system"], log_path=root / "r.log"):
            settings = Settings(prefect_api_url=api, gateway_data_dir=data)
            adapter = PrefectAdapter(settings)
            noop = JobSpec(TaskKind.STUDENT_TESTING, {"test_job": {}}, {"deployment": "gateway-noop/system"})
            dep_id = adapter.deployment_id("gateway-noop/system")
            raw = httpx.Client(base_url=api + "/")
            if args.breakdown:
                asyncio.run(breakdown(adapter, raw, noop, args.breakdown))
                adapter.close()
                raw.close()
                return
            if args.routes:
                routes(adapter, root, args.routes, args.jobs)
                adapter.close()
                raw.close()
                return

            # Submit latency: adapter vs raw create_flow_run (same body shape, same server).
            raw_times, adapter_times, legs = [], [], []
            for _ in range(args.runs):
                body = {"parameters": {"test_job": {}}, "idempotency_key": str(uuid.uuid4())}
                raw_times.append(timed(lambda b=body: raw.post(f"deployments/{dep_id}/create_flow_run", json=b)))
                leg = f"bench-{uuid.uuid4()}"
                legs.append(leg)
                adapter_times.append(timed(lambda leg=leg: adapter.submit(noop, leg)))
            until_done(adapter, legs)
            print(f"submit  raw create_flow_run: {ms(raw_times)}")
            ratio = statistics.median(adapter_times) / statistics.median(raw_times)
            print(f"submit  adapter.submit:      {ms(adapter_times)}  ratio {ratio:.2f}x")

            # End-to-end no-op, one at a time; reference: the same no-op function in-process.
            e2e = []
            for _ in range(5):
                leg = f"bench-{uuid.uuid4()}"
                e2e.append(timed(lambda leg=leg: (adapter.submit(noop, leg), until_done(adapter, [leg]))))
            inproc = [timed(lambda: {"noop": True}) for _ in range(5)]
            print(f"e2e     no-op through serve: {ms(e2e)}  (in-process no-op {ms(inproc)})")

            # End-to-end example assignment vs the same work in-process.
            from backends.work.student_testing import run_student_testing

            repos = materialize_example(root / "example")
            test_job = repos.test_job("passing").model_dump()
            work = [timed(lambda: run_student_testing(test_job, settings=settings)) for _ in range(3)]
            example = JobSpec(TaskKind.STUDENT_TESTING, {"test_job": test_job})
            flows = []
            for _ in range(3):
                leg = f"bench-{uuid.uuid4()}"
                flows.append(timed(lambda leg=leg: (adapter.submit(example, leg), until_done(adapter, [leg]))))
            print(f"e2e     example in-process:  {ms(work)}")
            ratio = statistics.median(flows) / statistics.median(work)
            print(f"e2e     example via Prefect: {ms(flows)}  ratio {ratio:.2f}x")

            # Throughput: N no-op runs at once through a runner with limit 4.
            batch = [f"bench-{uuid.uuid4()}" for _ in range(args.runs)]
            start = time.perf_counter()
            for leg in batch:
                adapter.submit(noop, leg)
            until_done(adapter, batch, timeout=600)
            elapsed = time.perf_counter() - start
            print(f"runs/s  {args.runs} no-op runs, limit 4: {args.runs / elapsed:.2f} runs/s ({elapsed:.1f} s)")
            adapter.close()
            raw.close()


if __name__ == "__main__":
    main()
