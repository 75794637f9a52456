"""Benchmark-style check: the same grade whatever the machine's load (issue 23, part 3).

A population of near-limit students (CPU-bound solutions calibrated to use 50-80 % of the time limit, and one
that sleeps for part of it), and an endless loop that must be TIMEDOUT every time (the limit still cuts), is
graded through the real sandbox (`run_pytest` + `verdict.decide`, the warm runner by default)
N times on the machine as it is, and N times beside 4 CPU burners (`yes > /dev/null`, started and
stopped by this script). Every student must get the same grade (root status, score, every test's verdict) in
every run. Runs go through a pool of 4 threads, so admission (one sandbox per usable core) is exercised too.

Also reported: the CPU time each student's run used up to the end of its test (measured inside the sandbox as
the test process's CPU time: its session, collection and the test, and the process's start before it; as a share
of the limit: what the CPU clock counts, or a little more), and
how many runs took longer than the limit on the wall clock from the sandbox's start: each of those would have
been TIMEDOUT under the old rule (wall clock from before the sandbox started).

    PYTHONPATH=. .venv/bin/python bench/bench_load_invariance.py [--runs 20] [--limit 2] [--runner warm|cold]

Needs root and bubblewrap (a uid per run). Exit status 0 when every grade held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backends.work.report import build_report, report_score  # noqa: E402
from backends.work.sandbox import Limits, make_run_dir, remove_run_dir, run_pytest  # noqa: E402
from backends.work.verdict import decide  # noqa: E402
from common.settings import Settings  # noqa: E402

_WORK = "def work(n):\n    total = 0\n    for i in range(n):\n        total += i * i % 7\n    return total\n"
_TEST = (
    "import json, time\n"
    "from solution import solve\n\n"
    "def test_solve():\n"
    "    assert solve() >= 0\n"
    "    with open('/out/cpu.json', 'w') as handle:  # the process's CPU so far: what the CPU clock counts, and more\n"
    "        json.dump({'cpu': time.process_time()}, handle)\n\n"
    "def test_quick():\n"
    "    assert solve.__name__ == 'solve'\n"
)


@dataclass(frozen=True)
class Student:
    name: str
    cpu_share: float  # of the time limit, computing
    sleep_share: float = 0.0  # of the time limit, sleeping (the wall clock's business, not the CPU clock's)
    endless: bool = False  # computes forever: the CPU clock must cut it, loaded or not


POPULATION = [Student("cpu50", 0.50), Student("cpu60", 0.60), Student("cpu70", 0.70), Student("cpu80", 0.80),
              Student("mixed40+30", 0.40, 0.30), Student("endless", 0.0, endless=True)]  # fmt: skip


def iterations_per_cpu_second() -> float:
    """Calibrate the students' loop in this interpreter (CPU time, so the machine's load barely moves it)."""
    namespace: dict[str, object] = {}
    exec(_WORK, namespace)  # noqa: S102 - our own fixed source
    work = namespace["work"]
    best = float("inf")
    n = 2_000_000
    for _ in range(3):
        started = time.process_time()
        work(n)  # type: ignore[operator]
        best = min(best, time.process_time() - started)
    return n / best


def solution(student: Student, limit: float, rate: float) -> str:
    if student.endless:
        return "def solve():\n    while True:\n        pass\n"
    n = int(student.cpu_share * limit * rate)
    pause = student.sleep_share * limit
    return f"import time\n{_WORK}\ndef solve():\n    time.sleep({pause!r})\n    return work({n})\n"


def grade(student: Student, limit: float, rate: float, settings: Settings) -> dict[str, object]:
    rd = make_run_dir(settings)
    try:
        (rd.work / "solution.py").write_text(solution(student, limit, rate))
        (rd.work / "test_student.py").write_text(_TEST)
        files = ["test_student.py"]
        limits = Limits.from_settings(settings, limit)
        outcome = run_pytest(rd, files, ["test_student.py"], limits, settings)
        outcomes, run = decide(outcome, files, limit)
        report = build_report("bench", outcomes, run)
        cpu_file = rd.out / "cpu.json"
        cpu = json.loads(cpu_file.read_text())["cpu"] if cpu_file.is_file() else None
        verdicts = tuple(sorted((t["name"], t["status"], t["result"]) for c in report["tests"] for t in c["tests"]))
        grade = (report["status"], report_score(report), verdicts)
        return {"grade": grade, "cpu": cpu, "wall": outcome.duration, "message": report.get("statusMessage")}
    finally:
        remove_run_dir(rd)


def round_of(runs: int, limit: float, rate: float, settings: Settings) -> dict[str, list[dict[str, object]]]:
    jobs = [s for _ in range(runs) for s in POPULATION]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda s: (s.name, grade(s, limit, rate, settings)), jobs))
    by_student: dict[str, list[dict[str, object]]] = defaultdict(list)
    for name, result in results:
        by_student[name].append(result)
    return by_student


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--limit", type=float, default=2.0, help="the time limit (seconds)")
    parser.add_argument("--runner", default="warm", choices=["warm", "cold"])
    parser.add_argument("--burners", type=int, default=4)
    parser.add_argument("--uid-base", type=int, default=300000)
    parser.add_argument("--tolerance", type=float, default=None, help="SANDBOX_CPU_TOLERANCE (default: the setting)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    os.chmod(root, 0o755)
    # A uid range of its own: runs of other sandbox roots on this machine (test suites) lock uids elsewhere.
    extra = {} if args.tolerance is None else {"sandbox_cpu_tolerance": args.tolerance}
    settings = Settings(sandbox_root=root, sandbox_runner=args.runner, sandbox_uid_base=args.uid_base, **extra)  # type: ignore[arg-type]
    rate = iterations_per_cpu_second()
    grade(POPULATION[0], args.limit, rate, settings)  # builds the runtime and the warm runner once
    probe = POPULATION[3]  # calibrate in the sandbox, on the largest share: the median of 3 runs
    measured = statistics.median(grade(probe, args.limit, rate, settings)["cpu"] for _ in range(3))  # type: ignore[type-var]
    rate *= probe.cpu_share * args.limit / measured  # type: ignore[operator]
    slots = settings.sandbox_slots or len(os.sched_getaffinity(0))
    cut = Limits.from_settings(settings, args.limit).cpu_allowance
    print(f"limit {args.limit:g}s (the CPU clock cuts at {cut:g}s: tolerance {settings.sandbox_cpu_tolerance:.0%}), "
          f"runner {args.runner}, {args.runs} runs per student and condition, "
          f"load average at start {os.getloadavg()[0]:.1f}, slots {slots}")  # fmt: skip
    conditions: dict[str, dict[str, list[dict[str, object]]]] = {}
    loads: dict[str, float] = {}
    started = time.monotonic()
    conditions["as is"] = round_of(args.runs, args.limit, rate, settings)
    loads["as is"] = os.getloadavg()[0]
    burners = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(args.burners)]
    try:
        conditions[f"+{args.burners} burners"] = round_of(args.runs, args.limit, rate, settings)
        loads[f"+{args.burners} burners"] = os.getloadavg()[0]
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    held = True
    print(f"{'student':<12} {'condition':<12} {'CPU/limit (median, max)':<24} {'wall>limit':>10}  grades")
    for student in POPULATION:
        seen = set()
        for condition, by_student in conditions.items():
            results = by_student[student.name]
            grades = {json.dumps(r["grade"]) for r in results}
            seen |= grades
            cpus = [r["cpu"] / args.limit for r in results if r["cpu"] is not None]  # type: ignore[operator]
            over = sum(1 for r in results if r["wall"] > args.limit)  # type: ignore[operator]
            cpu_text = f"{statistics.median(cpus):.0%}, {max(cpus):.0%}" if cpus else "-"
            summary = "; ".join(f"{json.loads(g)[0]} {json.loads(g)[1]:.2f}" for g in sorted(grades))
            print(f"{student.name:<12} {condition:<12} {cpu_text:<24} {over:>4}/{len(results):<5}  {summary}")
        expected = "TIMEDOUT" if student.endless else "COMPLETED"
        if len(seen) != 1 or json.loads(next(iter(seen)))[0] != expected:
            held = False
            for condition, by_student in conditions.items():
                for r in by_student[student.name]:
                    if r["grade"][0] != ("TIMEDOUT" if student.endless else "COMPLETED"):  # type: ignore[index]
                        print(f"  {condition}: {r['grade'][0]} {r['message']}")  # type: ignore[index]
    print(f"load average at the end of each condition: {json.dumps({k: round(v, 1) for k, v in loads.items()})}")
    print(f"elapsed {time.monotonic() - started:.0f}s; same grade in every run: {'yes' if held else 'NO'}")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
