"""Issue 29's table in one command: every row's bench, one after the other, and one summary at the end.

The issue's "done" is every row measured the same day, as ratios with their spread over at least 3 interleaved
rounds. This driver runs the command of each row (`docs/benchmarks.md`, "Issue 29 table: one command") with
parameters that keep the whole table under ~30 minutes on an idle 2-core machine, never two benches at once, each
bench on its own scratch PostgreSQL database and its own Redis server as the benches already do. Each run's raw
output goes to `<out>/<key>.txt` (the command, the UTC time and the load average on top); the summary (per figure:
the per-round median and spread, the figure judged against the goal, met or not, the load average before and
after the run, its wall time) is printed and written to `<out>/summary.md`.

    PYTHONPATH=. .venv/bin/python bench/run_table.py [--out /tmp/table29] [--only submit gate ...] [--quick]
    PYTHONPATH=. .venv/bin/python bench/run_table.py --list

`--quick` runs every bench with the smallest parameters (one round, a second or a few jobs): it checks that each
command runs to its end and that its output is still read right; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Comparison(enum.Enum):
    """How a figure meets its goal."""

    AT_MOST = "≤"
    AT_LEAST = "≥"


class Verdict(enum.Enum):
    MET = "met"
    NOT_MET = "NOT met"
    NO_GOAL = "—"
    NO_FIGURE = "no figure (see the raw output)"


@dataclass(frozen=True)
class Goal:
    comparison: Comparison
    bound: float

    def judge(self, value: float | None) -> Verdict:
        if value is None:
            return Verdict.NO_FIGURE
        ok = value <= self.bound if self.comparison is Comparison.AT_MOST else value >= self.bound
        return Verdict.MET if ok else Verdict.NOT_MET

    def __str__(self) -> str:
        return f"{self.comparison.value} {self.bound:g}"


@dataclass(frozen=True)
class Figure:
    """One figure of the table: its values per round (or per backlog), and the value the goal is judged on."""

    row: str  # the measure
    name: str  # what exactly this figure is
    rounds: list[float]
    judged: float | None  # the figure compared with the goal (its basis is said in `judged_as`)
    judged_as: str
    goal: Goal | None
    unit: str = "×"

    @property
    def verdict(self) -> Verdict:
        return self.goal.judge(self.judged) if self.goal else Verdict.NO_GOAL

    def spread(self) -> str:
        if not self.rounds:
            return "—"
        values = self.rounds
        return (f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f}), n={len(values)}: "
                + " ".join(f"{v:.2f}" for v in values))  # fmt: skip


Parser = Callable[[str], list[Figure]]


@dataclass(frozen=True)
class Run:
    """One bench command; it may give several figures (the submit bench gives rows 1 and 2)."""

    key: str
    script: str
    args: list[str]
    quick: list[str]
    minutes: float  # expected wall time on an idle 2-core machine, start-up included
    parse: Parser

    def command(self, quick: bool) -> list[str]:
        return [sys.executable, f"bench/{self.script}", *(self.quick if quick else self.args)]


# ---------------------------------------------------------------------------------------------------- parsing
def _floats(pattern: str, text: str) -> list[tuple[str, ...]]:
    return re.findall(pattern, text, flags=re.MULTILINE)


def _last(pattern: str, text: str) -> float | None:
    found = re.findall(pattern, text, flags=re.MULTILINE)
    return float(found[-1]) if found else None


ROW_P99 = "submit p99 vs the reference, 32 / 128 connections"
ROW_MEMORY = "API memory under 32–128 connections"


def parse_submit(text: str) -> list[Figure]:
    """Rows 1 and 2 from `bench_submit.py --connections 32 128`: per round the p99 ratio gateway/reference at each
    load, and the API's resident memory after its runs (the largest of the round), against the peak (VmHWM)."""
    runs: dict[tuple[int, int, str], tuple[float, float]] = {}
    line = r"^round (\d+) +(\d+) conns? +(reference|gateway) *:.*? p99 ([\d.]+) ms,.*? RSS (\d+) MiB"
    for n, load, server, p99, rss in _floats(line, text):
        runs[(int(n), int(load), server)] = (float(p99), float(rss))
    loads = sorted({load for _, load, _ in runs})
    rounds = sorted({n for n, _, _ in runs})
    figures = []
    for load in loads:
        ratios = [runs[(n, load, "gateway")][0] / runs[(n, load, "reference")][0] for n in rounds
                  if (n, load, "gateway") in runs and (n, load, "reference") in runs]  # fmt: skip
        pooled = _last(rf"^ratio gateway/reference at {load} conns?: .*?p99 ([\d.]+)", text)
        figures.append(Figure(ROW_P99, f"p99 gateway/reference at {load} connections", ratios, pooled,
                              "ratio of the medians", Goal(Comparison.AT_MOST, 1.0)))  # fmt: skip
    rss = [max(runs[(n, load, "gateway")][1] for load in loads if (n, load, "gateway") in runs) for n in rounds]
    peak = _last(r"^memory gateway: .*peak \(VmHWM\) ([\d.]+) MiB", text)
    idle = _last(r"^memory gateway: idle ([\d.]+) MiB", text)
    figures.append(Figure(ROW_MEMORY, f"API resident MiB after each round's runs (idle {idle or 0:.0f} MiB)", rss,
                          peak, "peak (VmHWM) over the run", Goal(Comparison.AT_MOST, 150), "MiB"))  # fmt: skip
    ref_peak = _last(r"^memory reference: .*peak \(VmHWM\) ([\d.]+) MiB", text)
    figures.append(Figure(ROW_MEMORY, "the reference's peak (VmHWM), for scale", [], ref_peak, "peak", None, "MiB"))
    return figures


ROW_SHADOW_SUBMIT = "submit with shadow fraction 1 vs off, 32 connections"


def parse_shadow_submit(text: str) -> list[Figure]:
    """Row 3 from `bench_shadow.py --only submit --connections 32`: per round on 1/off, p50 and throughput."""
    line = r"^round \d+ 32 conn: on 1/off p50 ([\d.]+), p99 [\d.]+, throughput ([\d.]+)"
    found = _floats(line, text)
    pooled = re.findall(r"^ratio on 1/off at 32 conn: p50 ([\d.]+), p99 [\d.]+, throughput ([\d.]+)", text, re.M)
    p50, rps = (float(pooled[-1][0]), float(pooled[-1][1])) if pooled else (None, None)
    return [
        Figure(ROW_SHADOW_SUBMIT, "p50 on 1/off", [float(a) for a, _ in found], p50, "ratio of the medians",
               Goal(Comparison.AT_MOST, 1.10)),
        Figure(ROW_SHADOW_SUBMIT, "throughput on 1/off", [float(b) for _, b in found], rps, "ratio of the medians",
               Goal(Comparison.AT_LEAST, 0.9)),
    ]  # fmt: skip


ROW_SHADOW_E2E = "the primary's end-to-end time, shadow on vs off"


def parse_shadow_e2e(label: str) -> Parser:
    def parse(text: str) -> list[Figure]:
        """Row 4 from `bench_shadow_e2e.py`: per round p50 on/off; the pooled p50 ratio."""
        rounds = [float(x) for x in _floats(r"^round \d+: p50 shadow on / shadow off ([\d.]+)", text)]
        pooled = _last(r"^shadow on *: p50 .*?p50 / shadow off ([\d.]+)", text)
        return [Figure(ROW_SHADOW_E2E, f"p50 on/off, {label}", rounds, pooled, "all jobs pooled",
                       Goal(Comparison.AT_MOST, 1.10))]  # fmt: skip

    return parse


ROW_CANARY = "canary 50 % + shadow vs no migration, as shadow legs pile up"


def parse_cutover(text: str) -> list[Figure]:
    """Row 5 from `bench_shadow.py --only cutover`: per round canary/no migration p50 at each load; flat means the
    last round's ratio no higher than the first's (judged: last/first ≤ 1.10)."""
    figures = []
    for load in ("32", "1"):
        ratios = [float(x) for x in _floats(rf"^round \d+ {load} conn: canary 50%/no migration p50 ([\d.]+)", text)]
        growth = ratios[-1] / ratios[0] if len(ratios) > 1 else None
        figures.append(Figure(ROW_CANARY, f"p50 canary/no migration per round, {load} conn", ratios, growth,
                              "last round / first round", Goal(Comparison.AT_MOST, 1.10)))  # fmt: skip
    legs = _last(r"cc-w1-e4: \d+ jobs, (\d+) shadow legs", text)
    if legs is not None:
        figures.append(Figure(ROW_CANARY, "open shadow legs at the end", [], legs, "count", None, "legs"))
    return figures


def parse_backlog(text: str) -> list[Figure]:
    """Row 5, the backlog made the variable (`bench_shadow_backlog.py`): per backlog, canary/no migration p50 and
    shared buffers per request; flat means the largest backlog's ratio no higher than at the smallest."""
    found = _floats(r"^canary/no migration at (\d+) open shadow legs: p50 ([\d.]+), .*? buffers/req ([\d.]+)", text)
    figures = []
    for index, name in ((1, "p50"), (2, "shared buffers/req")):
        values = [float(row[index]) for row in found]
        growth = values[-1] / values[0] if len(values) > 1 else None
        backlogs = "/".join(row[0] for row in found)
        figures.append(Figure(ROW_CANARY, f"{name} canary/no migration at {backlogs} open shadow legs", values,
                              growth, "largest backlog / smallest", Goal(Comparison.AT_MOST, 1.10)))  # fmt: skip
    return figures


ROW_COMPLETION = "no-op submit → COMPLETED, vs a raw Celery round trip"


def parse_completion(text: str) -> list[Figure]:
    """Row 6 from `bench_completion.py --variants gateway-push`: per round p50 push/raw; pooled p50 ratio."""
    rounds = [float(x) for x in _floats(r"^round \d+: p50 gateway-push / raw-celery ([\d.]+)", text)]
    pooled = _last(r"^gateway-push: p50 .*?p50 / raw-celery ([\d.]+)", text)
    return [Figure(ROW_COMPLETION, "p50 gateway (pushed completion) / raw Celery", rounds, pooled,
                   "all jobs pooled", Goal(Comparison.AT_MOST, 2.0))]  # fmt: skip


ROW_PREFECT = "the example, submit → final, Prefect route vs Celery route"


def parse_prefect(text: str) -> list[Figure]:
    """Row 7 from `bench_prefect.py --routes`: per round the medians' ratio prefect/celery; pooled."""
    rounds = [float(x) for x in _floats(r"^round \d+ .*ratio prefect/celery ([\d.]+)", text)]
    pooled = _last(r"^ratio prefect/celery \(pooled medians\): ([\d.]+)", text)
    prefect = _last(r"^prefect *: median ([\d.]+) s", text)
    celery = _last(r"^celery *: median ([\d.]+) s", text)
    name = f"Prefect / Celery (medians {prefect or 0:.2f} s / {celery or 0:.2f} s)"
    return [Figure(ROW_PREFECT, name, rounds, pooled, "all jobs pooled", Goal(Comparison.AT_MOST, 5.0))]


ROW_E2E = "200 real jobs end to end vs a local 2-process pool"


def parse_e2e(text: str) -> list[Figure]:
    """Row 8 from `bench_e2e.py`: per round gateway/reference jobs/s; pooled over every round."""
    rounds = [float(x) for x in _floats(r"^round \d+ \(.*?\(ratio ([\d.]+)\)", text)]
    pooled = _last(r"^ratio gateway/reference: ([\d.]+)", text)
    return [Figure(ROW_E2E, "jobs/s gateway/reference", rounds, pooled, "all rounds pooled",
                   Goal(Comparison.AT_LEAST, 0.95))]  # fmt: skip


ROW_RECONCILER = "reconciler cycle over 100,000 open legs"


def parse_reconciler(text: str) -> list[Figure]:
    """Row 9 from `bench_reconciler.py --legs 100000`: per round the cycle (s) and its ratio to one engine poll."""
    found = _floats(r"^round \d+: tick (\d+) ms \(CPU \d+ ms\), poll of all ids (\d+) ms", text)
    ticks = [float(tick) / 1000 for tick, _ in found]
    ratios = [float(tick) / max(float(poll), 1.0) for tick, poll in found]
    return [
        Figure(ROW_RECONCILER, "one cycle, seconds", ticks, statistics.median(ticks) if ticks else None,
               "median of the rounds", Goal(Comparison.AT_MOST, 1.0), "s"),
        Figure(ROW_RECONCILER, "cycle / one adapter poll of all ids (reference)", ratios,
               _last(r"; ratio ([\d.]+)$", text), "ratio of the medians", None),
    ]  # fmt: skip


ROW_GATE = "one gate evaluation over 1,000,000 comparisons"


def parse_gate(text: str) -> list[Figure]:
    """Row 10 from `bench_cutover_gate.py`: the median, min and max of its rounds (seconds) for `evaluate_one`, and
    for the evidence read from the rows as before the tally (`scanned_evidence`, the same rows, the same rounds)."""
    spread = r"median ([\d.]+) s, min ([\d.]+) s, max ([\d.]+) s"
    tally = re.findall(rf"evaluate_one \(tally\): {spread}", text) or re.findall(spread, text)
    scan = re.findall(rf"scanned_evidence, before 0016\): {spread}", text)
    if not tally:
        return [Figure(ROW_GATE, "one evaluation, seconds", [], None, "median of the rounds",
                       Goal(Comparison.AT_MOST, 1.0), "s")]  # fmt: skip
    median, low, high = (float(x) for x in tally[-1])
    figures = [Figure(ROW_GATE, f"one evaluation, seconds (min {low:.2f}, max {high:.2f})", [], median,
                      "median of the rounds", Goal(Comparison.AT_MOST, 1.0), "s")]  # fmt: skip
    if scan:
        before = float(scan[-1][0])
        figures.append(Figure(ROW_GATE, f"evaluation / the evidence read from the rows ({before:.2f} s)", [],
                              median / before if before else None, "ratio of the medians", None))  # fmt: skip
    return figures


# ------------------------------------------------------------------------------------------------------ rows
RUNS = [
    Run("submit", "bench_submit.py", ["--connections", "32", "128", "--rounds", "3", "--seconds", "10"],
        ["--connections", "32", "128", "--rounds", "1", "--seconds", "2"], 3.0, parse_submit),
    Run("shadow_submit", "bench_shadow.py",
        ["--only", "submit", "--connections", "32", "--rounds", "3", "--seconds", "10"],
        ["--only", "submit", "--connections", "32", "--rounds", "1", "--seconds", "2"], 2.5, parse_shadow_submit),
    Run("shadow_e2e", "bench_shadow_e2e.py", ["--jobs", "60", "--rounds", "4"], ["--jobs", "3", "--rounds", "1"],
        1.0, parse_shadow_e2e("each primary beside its own shadow")),
    Run("shadow_e2e_b2b", "bench_shadow_e2e.py", ["--jobs", "60", "--rounds", "4", "--back-to-back"],
        ["--jobs", "3", "--rounds", "1", "--back-to-back"], 1.0, parse_shadow_e2e("back to back")),
    Run("canary", "bench_shadow.py",
        ["--only", "cutover", "--connections", "32", "1", "--rounds", "3", "--seconds", "10"],
        ["--only", "cutover", "--connections", "32", "1", "--rounds", "2", "--seconds", "2"], 2.5, parse_cutover),
    Run("canary_backlog", "bench_shadow_backlog.py", ["--backlogs", "0", "5000", "20000", "--seconds", "5"],
        ["--backlogs", "0", "500", "--seconds", "2"], 1.5, parse_backlog),
    Run("completion", "bench_completion.py", ["--jobs", "40", "--rounds", "5", "--variants", "gateway-push"],
        ["--jobs", "3", "--rounds", "1", "--variants", "gateway-push"], 1.0, parse_completion),
    Run("prefect", "bench_prefect.py", ["--routes", "3", "--jobs", "3"], ["--routes", "1", "--jobs", "1"], 3.0,
        parse_prefect),
    Run("e2e", "bench_e2e.py", ["--jobs", "200", "--rounds", "4"], ["--jobs", "4", "--rounds", "1", "--warmup", "2"],
        2.5, parse_e2e),
    Run("reconciler", "bench_reconciler.py", ["--legs", "100000", "--rounds", "5"],
        ["--legs", "2000", "--rounds", "1"], 3.0, parse_reconciler),
    Run("gate", "bench_cutover_gate.py", ["--rows", "1000000", "--rounds", "3"], ["--rows", "10000", "--rounds", "1"],
        5.0, parse_gate),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class Outcome:
    run: Run
    returncode: int | None  # None: stopped at its time limit
    seconds: float
    load_before: float
    load_after: float
    figures: list[Figure]


def load1() -> float:
    return os.getloadavg()[0]


def execute(run: Run, quick: bool, out: Path, limit: float) -> Outcome:
    """Run one bench to its end (or its time limit: SIGINT to its process group, so that its `finally` blocks stop
    the servers and workers it started in their own sessions, as Ctrl-C would; then TERM, then KILL); its output
    into `<out>/<key>.txt`; parse its figures."""
    command = run.command(quick)
    path = out / f"{run.key}.txt"
    before = load1()
    started = time.monotonic()
    with path.open("w") as raw:
        raw.write(f"# {' '.join(command[1:])}\n# started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
                  f"load average {before:.2f}\n")  # fmt: skip
        raw.flush()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=raw, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        returncode: int | None
        try:
            returncode = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            returncode = None
            for sig, grace in ((signal.SIGINT, 60.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=grace)
                    break
        except BaseException:  # Ctrl-C or TERM of the driver: stop the bench (its cleanup runs) before leaving
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=60)
            raise
    seconds = time.monotonic() - started
    after = load1()
    with path.open("a") as raw:
        raw.write(f"# ended {time.strftime('%H:%M:%S UTC', time.gmtime())} after {seconds:.0f} s, exit "
                  f"{returncode if returncode is not None else 'time limit'}, load average {after:.2f}\n")  # fmt: skip
    text = path.read_text(errors="replace")
    try:
        figures = run.parse(text)
    except (ValueError, ZeroDivisionError, KeyError, IndexError) as exc:
        print(f"{run.key}: its output could not be read ({exc!r}): {path}", flush=True)
        figures = []
    return Outcome(run, returncode, seconds, before, after, figures)


def summary(outcomes: list[Outcome], quick: bool) -> str:
    lines = [
        f"Issue 29 table, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (" (--quick: smallest parameters, the figures mean nothing)" if quick else ""),
        "",
        "| measure | figure | rounds: median (min–max), n: each | judged | goal | verdict | load before → after | "
        "run (key, exit, wall) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        exit_text = "time limit" if outcome.returncode is None else f"exit {outcome.returncode}"
        where = f"{outcome.run.key}, {exit_text}, {outcome.seconds / 60:.1f} min"
        load = f"{outcome.load_before:.2f} → {outcome.load_after:.2f}"
        if not outcome.figures:
            lines.append(f"| ? | — | — | — | — | {Verdict.NO_FIGURE.value} | {load} | {where} |")
        for f in outcome.figures:
            judged = "—" if f.judged is None else f"{f.judged:.2f} {f.unit} ({f.judged_as})"
            goal = f"{f.goal} {f.unit}" if f.goal else "—"
            lines.append(f"| {f.row} | {f.name} | {f.spread()} | {judged} | {goal} | {f.verdict.value} | {load} | "
                         f"{where} |")  # fmt: skip
    total = sum(o.seconds for o in outcomes)
    lines += ["", f"total wall time {total / 60:.1f} min; raw outputs beside this file"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/table29"), help="folder for the raw outputs")
    parser.add_argument("--only", nargs="+", choices=[r.key for r in RUNS], help="these runs only, in table order")
    parser.add_argument("--quick", action="store_true", help="smallest parameters: checks the commands, no figures")
    parser.add_argument("--list", action="store_true", help="print the commands and expected durations, run nothing")
    args = parser.parse_args()
    runs = [r for r in RUNS if not args.only or r.key in args.only]
    if args.list:
        for r in runs:
            print(
                f"{r.key:15} ~{r.minutes:.1f} min  PYTHONPATH=. .venv/bin/python {' '.join(r.command(args.quick)[1:])}"
            )
        print(f"expected in all: ~{sum(r.minutes for r in runs):.0f} min on an idle 2-core machine")
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    print(f"{len(runs)} benches, one at a time, expected ~{sum(r.minutes for r in runs):.0f} min on an idle 2-core "
          f"machine; raw outputs in {args.out}", flush=True)  # fmt: skip
    for run in runs:
        limit = 10 * 60 if args.quick else max(3 * run.minutes, 10) * 60
        print(f"{time.strftime('%H:%M:%S', time.gmtime())} {run.key} (load {load1():.2f}) ...", flush=True)
        outcome = execute(run, args.quick, args.out, limit)
        outcomes.append(outcome)
        status = "ok" if outcome.returncode == 0 else f"FAILED ({outcome.returncode}), see {args.out / run.key}.txt"
        print(f"    {status} in {outcome.seconds:.0f} s", flush=True)
        (args.out / "summary.md").write_text(summary(outcomes, args.quick) + "\n")
    text = summary(outcomes, args.quick)
    print("\n" + text)
    if any(o.returncode != 0 for o in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
