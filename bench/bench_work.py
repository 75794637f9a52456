"""Benchmark: the bundled example, clone to report, warm and cold, against a cold bare `python -m pytest`.

Variants, interleaved in every round (so load from anything else on the machine hits all alike), medians over
N rounds, ratios against the reference measured in the same run:
- reference: a bare `python -m pytest` of the same two files in a plain directory (this venv's interpreter, its
  plugins autoloaded as a developer would run it; no git, no sandbox, no limits);
- fairer references beside it, each also in every round and printed as a ratio (issue 29: the autoloaded
  plugins are most of the bare run's time, and the runners below load none):
  - pytest without plugin autoload: the same command with `PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`;
  - `import pytest`: a new interpreter that only imports pytest (`python -c "import pytest"`), the floor of any
    run that starts an interpreter and pytest;
- warm: `run_student_testing` with `SANDBOX_RUNNER=warm` (the per-worker zygote forks the run into its
  namespaces), bubblewrap-equivalent isolation;
- cold: `SANDBOX_RUNNER=cold`, bubblewrap + a new interpreter per run;
- cold-none: `SANDBOX_ISOLATION=none`, the same launcher without namespaces: cold − cold-none is what
  isolation adds to a run;
- bwrap alone: `bwrap <the run's namespaces> /bin/true` against `/bin/true`, the tool's own cost.

    .venv/bin/python bench/bench_work.py [N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backends.examples import DATA, EXAMPLE_PATH, materialize_example  # noqa: E402
from backends.work.student_testing import run_student_testing  # noqa: E402
from common.settings import Settings  # noqa: E402

REFERENCE = "bare pytest (reference)"
NO_AUTOLOAD = "pytest, PYTEST_DISABLE_PLUGIN_AUTOLOAD=1"
IMPORT_ONLY = "python -c 'import pytest'"


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bare_pytest(workdir: Path, autoload: bool = True) -> None:
    env = {**os.environ, **({} if autoload else {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_calc.py"], cwd=workdir,
                   capture_output=True, check=False, env=env)  # fmt: skip


def import_pytest() -> None:
    subprocess.run([sys.executable, "-c", "import pytest"], capture_output=True, check=True)


BWRAP = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
         "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/", "--"]  # fmt: skip


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    root = Path(tempfile.mkdtemp(prefix="bench-work-"))
    try:
        repos = materialize_example(root / "repos")
        plain = root / "plain"
        plain.mkdir()
        shutil.copy(DATA / "passing" / EXAMPLE_PATH / "calc.py", plain)
        shutil.copy(DATA / "reference" / EXAMPLE_PATH / "test_calc.py", plain)
        job = repos.test_job("passing")
        settings = {
            "warm": Settings(sandbox_runner="warm"),  # type: ignore[arg-type]
            "cold": Settings(sandbox_runner="cold"),  # type: ignore[arg-type]
            "cold-none": Settings(sandbox_runner="cold", sandbox_isolation="none"),  # type: ignore[arg-type]
        }
        variants: dict[str, Callable[[], object]] = {
            REFERENCE: lambda: bare_pytest(plain),
            NO_AUTOLOAD: lambda: bare_pytest(plain, autoload=False),
            IMPORT_ONLY: import_pytest,
        }
        for name, value in settings.items():
            variants[name] = lambda value=value: run_student_testing(job, settings=value)
        variants["/bin/true"] = lambda: subprocess.run(["/bin/true"], check=True)
        variants["bwrap /bin/true"] = lambda: subprocess.run([*BWRAP, "/bin/true"], check=True)
        for action in variants.values():  # warm-up: runtime dir, zygote, page cache
            action()
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(runs):
            for name, action in variants.items():
                samples[name].append(timed(action))
        med = {name: statistics.median(values) for name, values in samples.items()}
        refs = (REFERENCE, NO_AUTOLOAD, IMPORT_ONLY)
        print(f"rounds: {runs} (medians, interleaved)")
        print("| variant | median ms | × bare pytest | × pytest, no plugin autoload | × import pytest |")
        print("|---|---|---|---|---|")
        for name in (*refs, "warm", "cold", "cold-none"):
            ratios = " | ".join(f"{med[name] / med[ref]:.2f}" for ref in refs)
            print(f"| {name} | {med[name] * 1000:.1f} | {ratios} |")
        print(f"isolation per run (cold − cold-none): {(med['cold'] - med['cold-none']) * 1000:.1f} ms")
        print(f"bwrap alone (bwrap /bin/true − /bin/true): {(med['bwrap /bin/true'] - med['/bin/true']) * 1000:.1f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
