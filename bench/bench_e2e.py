"""End to end: real example jobs through the gateway's Celery route against the same work in a 2-process pool.

The gateway, as deployed: the API (`uvicorn gateway.api.app:create_app`, one process, its in-process reconciler
with the completion feed), one Celery worker (`gateway worker start`, prefork, concurrency 2), a PostgreSQL
store and result table, a Redis broker. Jobs are submitted over HTTP (`POST /api/tests`, admin Basic auth, 8
client threads), and a job is done when its row in the store is final (read from the store every 20 ms: no
client status read moves anything forward).

The reference: `concurrent.futures.ProcessPoolExecutor(2)` calling the worker's own work function
(`backends.work.student_testing.run_student_testing`) with the same settings (sandbox isolation, warm runner:
each pool process starts its zygote on its first job, as a worker's pool process does), on the same
repositories. The pool lives for the whole run, like the worker.

Half of the jobs test the passing student, half the failing one; every job's score is checked (passing 1.0,
failing below 1.0) on both sides. Rounds interleave (reference, gateway, reference, ...), each with
`--jobs / --rounds` jobs in flight at once; jobs/s is the total over the rounds; the ratio is gateway/reference.
The order within a round alternates (reference first in rounds 1, 3, ..., the gateway first in rounds 2, 4, ...):
the machine's speed drifts during a run, and a fixed order would hand one side the later machine every time.

    .venv/bin/python bench/bench_e2e.py [--jobs 200] [--rounds 4]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.examples import ExampleRepos, materialize_example  # noqa: E402
from backends.work.report import report_score  # noqa: E402
from backends.work.student_testing import run_student_testing  # noqa: E402
from bench.bench_submit import PG, Server, environment, start, stop  # noqa: E402
from common.legacy import DEFAULT_CONTENT_TYPE, ResultStatus  # noqa: E402
from common.settings import Settings  # noqa: E402
from gateway.store.catalog import load_catalog  # noqa: E402
from gateway.store.migrate import upgrade  # noqa: E402
from tests.support.celery_worker import base_env, running_worker, settings_from_env  # noqa: E402

CONTENT = "e2e-week1-ex1"
PASSWORD = "bench-pw"
FINAL = tuple(int(s) for s in (ResultStatus.COMPLETED, ResultStatus.FAILED, ResultStatus.CANCELLED,
                               ResultStatus.CRASHED))  # fmt: skip
POLL = 0.02
SUBMITTERS = 8


def students(total: int) -> list[str]:
    """`passing`, `failing`, `passing`, ... : half of each in every round."""
    return ["passing" if i % 2 == 0 else "failing" for i in range(total)]


def catalog(repos: ExampleRepos, members: list[tuple[str, str]]) -> dict[str, Any]:
    """One content on the Celery backend; a course member per job (a commit is one run per member)."""
    urls = {"passing": repos.passing_url, "failing": repos.failing_url}
    return {
        "execution_backends": [{"slug": "celery", "type": "celery", "properties": {}}],
        "course_contents": [{
            "id": CONTENT, "path": "week1.ex1", "directory": repos.path, "execution_backend": "celery",
            "course_content_type_id": DEFAULT_CONTENT_TYPE,
            "reference_url": repos.reference_url, "reference_commit": repos.reference_commit,
        }],
        "course_members": [{"id": member, "user_id": member, "repository_url": urls[student]}
                           for member, student in members],
        "users": [{"username": "bench", "password": PASSWORD, "role": "admin"}],
    }  # fmt: skip


def check(kind: str, student: str, score: float | None) -> None:
    ok = score == 1.0 if student == "passing" else score is not None and score < 1.0
    if not ok:
        raise SystemExit(f"{kind}: a {student} job scored {score}")


# ---------------------------------------------------------------------------------------------- the reference
def pool_job(job: dict[str, Any], settings: Settings) -> float | None:
    """In a pool process: the worker's work function, its report's score."""
    return report_score(run_student_testing(job, settings=settings))


def reference_round(pool: ProcessPoolExecutor, repos: ExampleRepos, settings: Settings, n: int) -> float:
    started = time.monotonic()
    kinds = students(n)
    futures = [pool.submit(pool_job, repos.test_job(kind).model_dump(mode="json"), settings) for kind in kinds]  # type: ignore[arg-type]
    scores = [future.result() for future in futures]
    elapsed = time.monotonic() - started
    for kind, score in zip(kinds, scores, strict=True):
        check("reference", kind, score)
    return elapsed


# ------------------------------------------------------------------------------------------------ the gateway
def gateway_round(
    api: Server, client: httpx.Client, database: str, repos: ExampleRepos, members: list[tuple[str, str]]
) -> float:
    """Submit one job per member over HTTP, wait until every row is final in the store, check the scores."""

    def submit(member: str) -> str:
        body = {"course_content_id": CONTENT, "directory": repos.path, "course_member_id": member,
                "version_identifier": repos.passing_commit if dict(members)[member] == "passing"
                else repos.failing_commit}  # fmt: skip
        answer = client.post(f"{api.url}/api/tests", json=body)
        if answer.status_code not in (200, 201):
            raise SystemExit(f"submit answered {answer.status_code}: {answer.text}")
        return str(answer.json()["id"])

    started, wall = time.monotonic(), time.time()
    with ThreadPoolExecutor(SUBMITTERS) as threads:
        ids = list(threads.map(submit, [member for member, _ in members]))
    submitted = time.monotonic() - started
    with contextlib.closing(psycopg2.connect(dbname=database, **PG)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT count(*) FROM result WHERE id = ANY(%s) AND status = ANY(%s)", (ids, list(FINAL)))
                if cur.fetchone()[0] == len(ids):  # type: ignore[index]
                    break
                time.sleep(POLL)
            elapsed = time.monotonic() - started
            cur.execute("SELECT id, status, result FROM result WHERE id = ANY(%s)", (ids,))
            rows = {row_id: (status, score) for row_id, status, score in cur.fetchall()}
            # When the worker stored the round's last result (its own clock, UTC, same machine).
            cur.execute(
                "SELECT extract(epoch FROM max(date_done AT TIME ZONE 'UTC')) FROM celery_taskmeta m "
                "JOIN result r ON r.test_system_id = m.task_id WHERE r.id = ANY(%s)",
                (ids,),
            )
            stored = float(cur.fetchone()[0]) - wall  # type: ignore[index]
    print(
        f"  gateway round: all {len(ids)} submitted after {submitted:.2f} s, the last result stored by the worker "
        f"at {stored:.2f} s, every row final at {elapsed:.2f} s",
        flush=True,
    )
    for row_id, (_, student) in zip(ids, members, strict=True):
        status, score = rows[row_id]
        if status != ResultStatus.COMPLETED:
            raise SystemExit(f"gateway: a {student} job ended {ResultStatus(status).name}")
        check("gateway", student, score)
    return elapsed


@contextlib.contextmanager
def profiling(folder: Path, pids: dict[str, int]) -> Iterator[None]:
    """py-spy (raw, 200 Hz, only threads holding the GIL: Python CPU) on each pid and its children, for the block."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    spies = [
        subprocess.Popen([str(spy), "record", "--pid", str(pid), "--subprocesses", "--rate", "200", "--gil", "--format",
                          "raw", "--output", str(folder / f"{name}.txt")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, pid in pids.items()
    ]  # fmt: skip
    try:
        yield
    finally:
        for process in spies:
            process.send_signal(signal.SIGINT)
        for process in spies:
            process.wait(timeout=60)


def _tree_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants, living or reaped (a reaped child's time is in its
    parent's `children_*`)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _named_seconds(names: tuple[str, ...]) -> float:
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] in names and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


@contextlib.contextmanager
def cpu_meter(side: str, trees: dict[str, list[int]]) -> Iterator[dict[str, float]]:
    """CPU seconds spent during the block by each named set of process trees, plus the database and broker
    servers (every postgres and redis-server process on the machine: shared with whatever else runs)."""
    servers = {f"{side} postgres+redis": ("postgres", "redis-server")}
    before = {name: sum(_tree_seconds(pid) for pid in pids) for name, pids in trees.items()}
    before.update({name: _named_seconds(procs) for name, procs in servers.items()})
    spent: dict[str, float] = {}
    yield spent
    for name, pids in trees.items():
        spent[name] = sum(_tree_seconds(pid) for pid in pids) - before[name]
    for name, procs in servers.items():
        spent[name] = _named_seconds(procs) - before[name]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200, help="per side, over all rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--profile", type=Path, help="py-spy the API and the worker (with its pool) into this folder")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    per_round = args.jobs // args.rounds
    totals = {"reference": 0.0, "gateway": 0.0}
    cpu: dict[str, float] = {}

    with environment() as (env, data):
        env = {**env, "GATEWAY_RECONCILE_IN_API": "true"}
        settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)})
        upgrade(settings)
        repos = materialize_example(data / "example")
        batches = [[(f"m-{n}-{i}", kind) for i, kind in enumerate(students(per_round))] for n in range(args.rounds)]
        warmup = [(f"m-warm-{i}", kind) for i, kind in enumerate(students(args.warmup))]
        load_catalog(catalog(repos, [m for batch in [warmup, *batches] for m in batch]), settings)
        servers: list[Server] = []
        auth = "Basic " + base64.b64encode(f"bench:{PASSWORD}".encode()).decode()
        with contextlib.ExitStack() as stack:
            stack.callback(lambda: [stop(server) for server in servers])
            api = start("gateway", "gateway.api.app:create_app", "/api/tests", env, data / "api", servers)
            worker = stack.enter_context(
                running_worker(base_env(env, data / "worker"), concurrency=2, log_dir=data / "worker")
            )
            client = stack.enter_context(httpx.Client(headers={"Authorization": auth}, timeout=60))
            pool_settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data / "pool")})
            pool = stack.enter_context(ProcessPoolExecutor(2))
            # Warm-up: pool processes and their zygotes, the worker's pool, runtime and zygotes, the API's caches.
            reference_round(pool, repos, pool_settings, args.warmup)
            gateway_round(api, client, env["POSTGRES_DB"], repos, warmup)
            if args.profile is not None:
                spies = {"api": api.process.pid, "worker": worker.pid}
                stack.enter_context(profiling(args.profile, spies))
            gateway_pids = {"gateway api": api.process.pid, "gateway worker": worker.pid}
            for n, batch in enumerate(batches):
                pool_pids = {"reference pool": [process.pid for process in pool._processes.values()]}
                measured: dict[str, tuple[float, dict[str, float]]] = {}
                # Counterbalanced (reference first in odd rounds, gateway first in even ones): the machine's speed
                # drifts over a run, and a side that always went second would always meet the later machine.
                order = ("reference", "gateway") if n % 2 == 0 else ("gateway", "reference")
                for side in order:
                    if side == "reference":
                        with cpu_meter(side, pool_pids) as spent:
                            elapsed = reference_round(pool, repos, pool_settings, per_round)
                    else:
                        with cpu_meter(side, {name: [pid] for name, pid in gateway_pids.items()}) as spent:
                            elapsed = gateway_round(api, client, env["POSTGRES_DB"], repos, batch)
                    measured[side] = (elapsed, spent)
                (ref, ref_cpu), (gw, gw_cpu) = measured["reference"], measured["gateway"]
                totals["reference"] += ref
                totals["gateway"] += gw
                for name, seconds in {**ref_cpu, **gw_cpu}.items():
                    cpu[name] = cpu.get(name, 0.0) + seconds
                print(f"round {n + 1} ({order[0]} first): reference {per_round / ref:.2f} jobs/s, "
                      f"gateway {per_round / gw:.2f} jobs/s "
                      f"(ratio {ref / gw:.2f}); CPU ms/job: " + ", ".join(
                          f"{name} {1000 * value / per_round:.0f}" for name, value in {**ref_cpu, **gw_cpu}.items()),
                      flush=True)  # fmt: skip

    done = per_round * args.rounds
    rate = {side: done / seconds for side, seconds in totals.items()}
    print(f"\n{done} example jobs per side (half passing, half failing), {args.rounds} interleaved rounds of "
          f"{per_round} in flight, every score checked")  # fmt: skip
    print("| side | jobs/s |\n|---|---|")
    for side, value in rate.items():
        print(f"| {side} | {value:.2f} |")
    print(f"ratio gateway/reference: {rate['gateway'] / rate['reference']:.2f}")
    print("CPU per job (ms; process trees, children included; database and broker are machine-wide, shared):")
    print(", ".join(f"{name} {1000 * value / done:.0f}" for name, value in cpu.items()))


if __name__ == "__main__":
    main()
