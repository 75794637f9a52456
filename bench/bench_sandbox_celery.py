"""Example jobs through a real Celery worker: warm runner against cold runs, jobs/s, in the same run.

Two workers on the embedded stack (filesystem broker, SQLite results: no server to share), the same command
(`gateway worker start`, prefork, concurrency 2), one with `SANDBOX_RUNNER=warm`, one with `SANDBOX_RUNNER=cold`.
Rounds alternate between them (load from anything else hits both); each round puts `--jobs / --rounds` example
jobs in flight at once and waits for all. jobs/s is the total over all rounds; the ratio is warm / cold.

    .venv/bin/python bench/bench_sandbox_celery.py [--jobs 200] [--rounds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backends.celery import names  # noqa: E402
from backends.celery.adapter import CeleryAdapter  # noqa: E402
from backends.examples import materialize_example  # noqa: E402
from backends.work.report import report_score  # noqa: E402
from tests.support.celery_worker import base_env, running_worker, settings_from_env  # noqa: E402

POLL = 0.02


def run_batch(adapter: CeleryAdapter, job: dict[str, Any], n: int) -> float:
    """Seconds from the first submit until the last of `n` jobs is final; every job must score 1.0."""
    started = time.monotonic()
    legs = [adapter.send(names.STUDENT_TESTING, {"test_job": job, "execution_backend_properties": {}},
                         str(uuid.uuid4())) for _ in range(n)]  # fmt: skip
    pending = list(legs)
    while pending:
        states = adapter.poll(pending)
        pending = [leg for leg, state in states.items() if not state.phase.is_final]
        if pending:
            time.sleep(POLL)
    elapsed = time.monotonic() - started
    for leg in legs:
        report = adapter.result(leg).report
        if report is None or report_score(report) != 1.0:
            raise SystemExit(f"job {leg} did not score 1.0: {adapter.result(leg)}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="bench-sandbox-celery-"))
    job = materialize_example(data / "example").test_job("passing").model_dump(mode="json")
    per_round = args.jobs // args.rounds
    totals = {"warm": 0.0, "cold": 0.0}
    with contextlib.ExitStack() as stack:
        adapters: dict[str, CeleryAdapter] = {}
        for runner in totals:
            env = base_env({"SANDBOX_RUNNER": runner}, data / runner)
            stack.enter_context(running_worker(env, concurrency=2, log_dir=data / runner))
            adapters[runner] = CeleryAdapter(settings_from_env(env))
            stack.callback(adapters[runner].close)
            run_batch(adapters[runner], job, 4)  # warm-up: pool processes, runtime, zygotes
        for _ in range(args.rounds):
            for runner, adapter in adapters.items():
                totals[runner] += run_batch(adapter, job, per_round)
    rate = {runner: per_round * args.rounds / seconds for runner, seconds in totals.items()}
    print(f"{per_round * args.rounds} example jobs per runner, {args.rounds} alternating rounds, concurrency 2")
    print("| runner | jobs/s | × cold |")
    print("|---|---|---|")
    for runner, value in rate.items():
        print(f"| {runner} | {value:.2f} | {value / rate['cold']:.2f} |")


if __name__ == "__main__":
    main()
