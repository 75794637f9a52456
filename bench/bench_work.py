"""Benchmark: one run of the bundled example, clone to report, split by phase.

Reference, measured in the same run: a bare `python -m pytest` of the same tests on the same files in a plain
directory (no git, no sandbox, no limits). Prints medians over N runs and the ratio full run / bare pytest.

    .venv/bin/python bench/bench_work.py [N]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backends.examples import DATA, EXAMPLE_PATH, materialize_example
from backends.work.student_testing import run_student_testing


def bare_pytest(workdir: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_calc.py"], cwd=workdir,
                   capture_output=True, check=False)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    root = Path(tempfile.mkdtemp(prefix="bench-work-"))
    try:
        repos = materialize_example(root / "repos")
        plain = root / "plain"
        plain.mkdir()
        shutil.copy(DATA / "passing" / EXAMPLE_PATH / "calc.py", plain)
        shutil.copy(DATA / "reference" / EXAMPLE_PATH / "test_calc.py", plain)
        run_student_testing(repos.test_job("passing"))  # warm-up: identity probe, page cache
        bare_pytest(plain)
        totals, bares, phases = [], [], {"clone": [], "copy": [], "pytest_start": [], "tests": []}
        for _ in range(runs):
            started = time.perf_counter()
            report = run_student_testing(repos.test_job("passing"))
            totals.append(time.perf_counter() - started)
            for key, value in report["properties"]["phases"].items():
                phases[key].append(value)
            bares.append(bare_pytest(plain))
        total, bare = statistics.median(totals), statistics.median(bares)
        print(f"runs: {runs} (medians)")
        print(f"full run, clone to report : {total * 1000:7.1f} ms")
        for key, values in phases.items():
            med = statistics.median(values)
            print(f"  {key:<24}: {med * 1000:7.1f} ms  ({med / total:5.1%})")
        other = total - sum(statistics.median(v) for v in phases.values())
        print(f"  {'rest (report, cleanup)':<24}: {other * 1000:7.1f} ms  ({other / total:5.1%})")
        print(f"bare python -m pytest     : {bare * 1000:7.1f} ms")
        print(f"ratio full / bare         : {total / bare:7.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
