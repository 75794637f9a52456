"""Shadowing's cost: on the submit path (and on the reconciler that sends the shadow legs), on a cutover stage,
and the comparator's throughput.

1. `--only submit`: submit p50 with shadowing on vs off, in the same run against the same gateway process. `wrk`
   (`bench/loadgen.py`) posts to `POST /api/tests` for a content without a shadow setting ("off") and for
   contents whose jobs get a second leg ("on 1": every job, "on 0.1": a tenth, sampled like a live setting;
   `aa_fraction`, the extra leg on the same Celery engine, so the shadow path runs for real: the second leg in
   the same insert statement, its send by the reconciler, its "sent" mark). The API runs without its in-process
   reconciler; a separate `gateway reconcile` process sends the shadow legs (woken by the primary's NOTIFY). Its
   periodic tick is set to one hour: with no worker every leg stays open, and a poll over them all is not what is
   measured here (`bench/bench_reconciler.py` measures that). Rounds interleave off / on 1 / on 0.1 (the order
   rotating per round), at 32 connections and at 1; after each run the bench waits until the outbox is empty, so
   the reconciler's CPU for that run's shadow legs is all counted; the API's CPU per request and the
   reconciler's (psutil) are printed side by side. `--profile DIR` first records one py-spy run per variant and
   prints where the API's samples went.
2. `--only cutover`: submit p50 for a content with a migration at canary 50 % (shadow fraction 1) vs a content
   with no migration. The member is one outside the canary, so Celery answers both and the difference is the
   cutover's own work (stage lookup, bucket, routing record, shadow decision, the second leg). Its shadow legs
   are for Prefect, which does not run here: they stay in the outbox (no reconciler runs in this mode; what
   sending them costs is figure 1's).
3. `--only comparator`: the comparator on a pair of reports with 1,000 tests each (normalise, diff, classify).

Run: `.venv/bin/python bench/bench_shadow.py [--only submit|cutover|comparator] [--seconds S] [--rounds N]
[--connections 32 1] [--profile DIR]` (needs PostgreSQL and Redis on localhost, `wrk`, and `py-spy` for
`--profile`). Every process it starts leads its own process group and is killed by that group in a `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_submit import PG, Server, environment, seed, service_cpu, start, stop  # noqa: E402
from bench.loadgen import run_wrk, server_cpu_seconds  # noqa: E402
from common.settings import Settings  # noqa: E402
from gateway.compare.experiment import Experiment, LegRun  # noqa: E402
from gateway.compare.rules import default_rules  # noqa: E402
from gateway.cutover.buckets import bucket, in_canary  # noqa: E402
from gateway.cutover.stage_machine import Action  # noqa: E402
from gateway.cutover.stages import Scope, Stage  # noqa: E402
from gateway.jobs.cutover_changes import change_migration  # noqa: E402
from gateway.jobs.shadow_admin import set_shadow  # noqa: E402
from gateway.store.catalog import load_catalog  # noqa: E402
from gateway.store.db import make_async_engine, make_sessionmaker  # noqa: E402
from tests.support.celery_worker import base_env, settings_from_env  # noqa: E402

AUTH = "Basic " + base64.b64encode(b"bench:bench-pw").decode()
# content directory -> the share of its jobs that get a second leg
SHADOWED = {"w1/e2": 1.0, "w1/e3": 0.1}
CUTOVER_DIR = "w1/e4"
DATABASE: list[str] = []  # the run's scratch database (set once it exists)


def _content_id(directory: str) -> str:
    return f"cc-{directory.replace('/', '-')}"


def seed_shadow(env: dict[str, str], data: Path) -> str:
    """Contents w1/e2 (every job shadowed), w1/e3 (a tenth), w1/e4 (canary 50 % to Prefect); returns the member
    to post w1/e4's jobs for: one outside the canary, so Celery answers."""
    settings: Settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)})
    contents = [
        {"id": _content_id(d), "path": d.replace("/", "."), "directory": d, "execution_backend": "celery",
         "reference_url": "file:///ref", "reference_commit": "0" * 40}
        for d in (*SHADOWED, CUTOVER_DIR)
    ]  # fmt: skip
    members = [{"id": f"m{i}", "user_id": f"u{i}", "repository_url": "file:///student"} for i in range(2, 12)]
    load_catalog({"course_contents": contents, "course_members": members}, settings)

    async def configure() -> str:
        engine = make_async_engine(settings)
        sessions = make_sessionmaker(engine)
        try:
            for directory, fraction in SHADOWED.items():
                values = {"aa_fraction": fraction, "max_in_flight": 10**9, "deadline_seconds": 3600}
                await set_shadow(sessions, backend=None, content=_content_id(directory), values=values, user_id=None)
            content = _content_id(CUTOVER_DIR)
            # The stage names the shadow engine and fraction; the setting only lifts the cap (no leg ever finishes
            # here, and the default cap of a stage, 100 unfinished shadow legs, would skip all but the first).
            values = {"engine": "prefect", "fraction": 1.0, "max_in_flight": 10**9, "deadline_seconds": 3600}
            await set_shadow(sessions, backend=None, content=content, values=values, user_id=None)
            await change_migration(sessions, Scope.CONTENT, content, Action.SET, "bench", stage=Stage.SHADOW,
                                   new_engine="prefect")  # fmt: skip
            result = await change_migration(sessions, Scope.CONTENT, content, Action.SET, "bench",
                                            stage=Stage.CANARY, percentage=50.0)  # fmt: skip
            salt = result.change.after.salt
            return next(m["id"] for m in members if not in_canary(bucket(salt, content, m["id"]), 50.0))
        finally:
            await engine.dispose()

    return asyncio.run(configure())


@contextlib.contextmanager
def reconciler(env: dict[str, str], data: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`gateway reconcile` in its own process group: it sends the shadow legs (its periodic tick set to 1 h)."""
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "reconcile.log", "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("gateway")), "reconcile"],
            env=base_env({**env, "GATEWAY_RECONCILE_INTERVAL": "3600"}, data),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        time.sleep(3)  # start-up (schema check, first tick, LISTEN): it has no readiness signal to wait on
        if process.poll() is not None:
            raise RuntimeError((data / "reconcile.log").read_text()[-3000:])
        yield process
    finally:
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=wait)


def body(directory: str, member: str = "m1") -> str:
    """A wrk body template: a new commit per request (`{n}`), unique per call."""
    run = uuid.uuid4().hex[:8]
    return f'{{"directory": "{directory}", "course_member_id": "{member}", "version_identifier": "{run}-{{n}}"}}'


def outbox_drained(database: str, timeout: float = 120) -> None:
    """Until no shadow leg waits in the outbox: the reconciler's CPU for a run's shadows is then all counted."""
    deadline = time.monotonic() + timeout
    with contextlib.closing(psycopg2.connect(dbname=database, **PG)) as conn:
        conn.autocommit = True
        while time.monotonic() < deadline:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM leg WHERE dispatch_state = 'pending' AND role = 'shadow'")
                if cur.fetchone()[0] == 0:
                    return
            time.sleep(0.05)  # polling interval of a deadline loop
    raise TimeoutError("shadow legs still in the outbox")


def shadow_legs_written(database: str) -> str:
    """Per content: jobs, and the shadow legs written for them (a check that the variants did what they say)."""
    with contextlib.closing(psycopg2.connect(dbname=database, **PG)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT r.course_content_id, count(DISTINCT r.id), count(l.id) FILTER (WHERE l.role = 'shadow') "
            "FROM result r JOIN leg l ON l.result_id = r.id GROUP BY 1 ORDER BY 1"
        )
        return "; ".join(f"{content}: {jobs} jobs, {legs} shadow legs" for content, jobs, legs in cur.fetchall())


def measure(
    server: Server, recon: subprocess.Popen[bytes] | None, payload: str, connections: int, seconds: float
) -> dict[str, float]:
    before = server_cpu_seconds(recon.pid) if recon else 0.0
    services = service_cpu(DATABASE[0])
    pg_before, redis_before = services.read()
    got = run_wrk(server.url, "/api/tests", server.process.pid, connections=connections, seconds=seconds,
                  body=payload, auth=AUTH)  # fmt: skip
    if got.errors:
        raise RuntimeError(f"{got.errors} errors\n{server.log_tail()}")
    if recon:
        outbox_drained(DATABASE[0])
    recon_ms = 1000 * (server_cpu_seconds(recon.pid) - before) / max(got.requests, 1) if recon else 0.0
    pg_after, redis_after = services.read()
    ms = 1000 / max(got.requests, 1)
    return {"rps": got.rps, "p50": got.p50_ms, "p99": got.p99_ms, "cpu": got.cpu_ms_per_request, "recon": recon_ms,
            "pg": (pg_after - pg_before) * ms, "redis": (redis_after - redis_before) * ms}  # fmt: skip


def profile(server: Server, payload: str, connections: int, seconds: float, out: Path) -> None:
    """One wrk run under py-spy (non-blocking sampling); prints the top frames by inclusive share."""
    raw = out.with_suffix(".txt")
    spy = subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking", "--threads", "--rate", "250",
         "--format", "raw", "--duration", str(int(seconds)), "--pid", str(server.process.pid), "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        run_wrk(server.url, "/api/tests", server.process.pid, connections=connections, seconds=seconds,
                body=payload, auth=AUTH)  # fmt: skip
        spy.wait(timeout=seconds + 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(spy.pid, signal.SIGKILL)
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in set(stack.split(";")):
            inclusive[frame] += int(count)
    print(f"--- py-spy {out.name}: {total} samples (every thread); top frames by inclusive share")
    for frame, n in inclusive.most_common(45):
        print(f"{100 * n / max(total, 1):5.1f}%  {frame[:160]}")


def _ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (a run of a few seconds on a stalled machine can complete no request)."""
    return a / b if b else float("nan")


def _total(m: dict[str, float]) -> float:
    return m["cpu"] + m["recon"] + m["pg"] + m["redis"]


def table(title: str, figures: dict[tuple[str, str], list[dict[str, float]]], reference: str) -> None:
    print(f"\n{title}")
    print("| load | variant | req/s | p50 ms | p99 ms | API CPU ms/req | reconciler CPU ms/req | PostgreSQL CPU ms/req "
          "| Redis CPU ms/req |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    med = {key: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for key, rows in figures.items()}
    for (load, name), m in med.items():
        print(f"| {load} | {name} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu']:.2f} | "
              f"{m['recon']:.2f} | {m['pg']:.2f} | {m['redis']:.2f} |")  # fmt: skip
    for load, name in med:
        if name == reference:
            continue
        v, r = med[(load, name)], med[(load, reference)]
        print(f"ratio {name}/{reference} at {load}: p50 {_ratio(v['p50'], r['p50']):.2f}, "
              f"p99 {_ratio(v['p99'], r['p99']):.2f}, throughput {_ratio(v['rps'], r['rps']):.2f}, "
              f"API CPU/req {_ratio(v['cpu'], r['cpu']):.2f}, "
              f"API+reconciler CPU/req {_ratio(v['cpu'] + v['recon'], r['cpu'] + r['recon']):.2f}, "
              f"total CPU/req (with PostgreSQL and Redis) {_ratio(_total(v), _total(r)):.2f}")  # fmt: skip


def submit_bench(args: argparse.Namespace, mode: str) -> None:
    loads = {f"{c} conn": c for c in args.connections}
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    with environment() as (env, data):
        seed(env, data)
        DATABASE[:] = [env["POSTGRES_DB"]]
        out_member = seed_shadow(env, data)
        if mode == "submit":
            variants = {"off": body("w1/e1"), **{f"on {f:g}": body(d) for d, f in SHADOWED.items()}}
        else:
            variants = {"no migration": body("w1/e1", out_member), "canary 50%": body(CUTOVER_DIR, out_member)}
        reference = next(iter(variants))
        servers: list[Server] = []
        with contextlib.ExitStack() as stack:
            try:
                server = start("gateway", "gateway.api.app:create_app", "/api/tests", env, data / "gw", servers)
                recon = stack.enter_context(reconciler(env, data / "rc")) if mode == "submit" else None
                for payload in variants.values():  # warm-up: pools, caches, threads
                    measure(server, recon, payload, max(args.connections), 3)
                if args.profile:
                    for name, payload in variants.items():
                        tag = name.replace(" ", "_").replace("%", "pct")
                        profile(server, payload, max(args.connections), args.seconds, args.profile / f"{mode}-{tag}")
                names = list(variants)
                for n in range(args.rounds):
                    # The order rotates per round: what follows a heavy run (autovacuum of its rows, say) is not
                    # always the same variant.
                    order = names[n % len(names) :] + names[: n % len(names)]
                    for load, connections in loads.items():
                        for name in order:
                            payload = variants[name]
                            got = measure(server, recon, payload, connections, args.seconds)
                            figures.setdefault((load, name), []).append(got)
                            print(f"round {n + 1} {load:8} {name:12}: {got['rps']:7.1f} req/s, "
                                  f"p50 {got['p50']:.2f} ms, p99 {got['p99']:.2f} ms, API CPU {got['cpu']:.2f} ms/req, "
                                  f"reconciler CPU {got['recon']:.2f} ms/req, PostgreSQL {got['pg']:.2f}, "
                                  f"Redis {got['redis']:.2f}", flush=True)  # fmt: skip
                        ref = figures[(load, reference)][-1]
                        for name in names[1:]:  # this round's ratios: flat across rounds or growing with the backlog
                            got = figures[(load, name)][-1]
                            print(f"round {n + 1} {load}: {name}/{reference} p50 {_ratio(got['p50'], ref['p50']):.2f}, "
                                  f"p99 {_ratio(got['p99'], ref['p99']):.2f}, "
                                  f"throughput {_ratio(got['rps'], ref['rps']):.2f}", flush=True)  # fmt: skip
            except BaseException:
                for s in servers:
                    print(f"--- {s.name} log:\n{s.log_tail()}", file=sys.stderr)
                raise
            finally:
                for s in servers:
                    stop(s)
        print(shadow_legs_written(env["POSTGRES_DB"]))
    print(f"load average {os.getloadavg()[0]:.2f} (a shared 2-core machine)")
    if figures:
        table(f"{mode}: median of {args.rounds} interleaved rounds, wrk {args.seconds:g} s per run", figures, reference)
        for load, name in figures:
            if name != reference:
                pairs = zip(figures[(load, name)], figures[(load, reference)], strict=True)
                ratios = [_ratio(v["p50"], r["p50"]) for v, r in pairs]
                print(f"p50 {name}/{reference} at {load} per round: {', '.join(f'{x:.2f}' for x in ratios)} "
                      f"(last/first {_ratio(ratios[-1], ratios[0]):.2f}: flat is 1)")  # fmt: skip


def big_report(n: int, flip_every: int = 0) -> dict[str, Any]:
    tests = []
    for i in range(n):
        failed = flip_every and i % flip_every == 0
        tests.append({
            "name": f"test_case_{i}", "type": "test", "status": "COMPLETED", "result": "FAILED" if failed else "PASSED",
            "resultMessage": f"assert {i} == {i + 1} in /tmp/run-{uuid.uuid4().hex[:6]}/test_x.py" if failed else "",
            "statusMessage": "", "timestamp": "2026-11-26T10:00:00+00:00", "duration": 0.01,
            "summary": {"total": 1, "passed": int(not failed), "failed": int(bool(failed)), "skipped": 0},
        })  # fmt: skip
    passed = sum(t["result"] == "PASSED" for t in tests)
    summary = {"total": n, "passed": passed, "failed": n - passed, "skipped": 0}
    collections = [{"name": f"test_file_{k}.py", "type": "collection", "tests": tests[k::10], "summary": summary}
                   for k in range(10)]  # fmt: skip
    return {"name": "r", "type": "report", "status": "COMPLETED", "result": "PASSED", "summary": summary,
            "tests": collections, "environment": {"python": "3.11"}}  # fmt: skip


def comparator_bench(repeat: int) -> None:
    experiment = Experiment(default_rules())
    primary = LegRun(engine="celery", phase="succeeded", outcome="succeeded", report=big_report(1000))
    same = LegRun(engine="prefect", phase="succeeded", outcome="succeeded", report=copy.deepcopy(primary.report))
    other = LegRun(engine="prefect", phase="succeeded", outcome="succeeded", report=big_report(1000, flip_every=7))
    for name, shadow in (("match", same), ("mismatch (143 tests differ)", other)):
        experiment.run(primary, shadow)
        started = time.perf_counter()
        for _ in range(repeat):
            verdict = experiment.run(primary, shadow)
        elapsed = time.perf_counter() - started
        print(f"comparator, 1,000 tests, {name}: {repeat / elapsed:.1f} comparisons/s "
              f"({1000 * elapsed / repeat:.1f} ms each), outcome {verdict.outcome}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--repeat", type=int, default=50, help="comparator runs per case")
    parser.add_argument("--profile", type=Path, default=None, help="a directory for py-spy profiles")
    parser.add_argument("--only", choices=["submit", "cutover", "comparator"], default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "comparator"):
        comparator_bench(args.repeat)
    for mode in ("submit", "cutover"):
        if args.only in (None, mode):
            submit_bench(args, mode)


if __name__ == "__main__":
    main()
