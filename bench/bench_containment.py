"""Containment figures (issue 23, part 4): a run that fills its disk, or holds too much memory in many
processes, beside an honest run. Prints what the hostile run got, what the worker saw, and the honest run's grade.

- disk: the filler writes 1 MiB files until its space is full; reported: how much it wrote before ENOSPC (its
  tmpfs, `--disk-mb`), and the host filesystem's free space under the sandbox root before and after;
- memory: the hog forks `--hog-processes` (6) processes of 300 MiB each (each within RLIMIT_AS); reported: the
  run's budget (`--memory-mb`), the bound in force (`cgroup-v1`/`cgroup-v2`: the run's own memory cgroup, or
  `watch`: the worker's polling; `--cgroup-root /some/plain/dir` forces the fallback), the peak (the cgroup's own
  `memory.max_usage_in_bytes` / `memory.peak`, or the largest proportional set size the polling saw), the verdict.

    PYTHONPATH=. .venv/bin/python bench/bench_containment.py [--disk-mb 64] [--memory-mb 768] [--runner warm]
        [--hog-processes 6] [--cgroup-root DIR] [--skip-disk]

Needs root and bubblewrap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backends.work.sandbox import Limits, RunOutcome, make_run_dir, remove_run_dir, run_pytest  # noqa: E402
from backends.work.verdict import decide  # noqa: E402
from common.settings import Settings  # noqa: E402

FILLER = (
    "import os\n\n"
    "def test_fill():\n"
    "    for n in range(1_000_000):\n"
    "        with open(f'blob{n}', 'wb') as handle:\n"
    "            handle.write(b'x' * (1 << 20))\n"
)
HOG = (
    "import os, time\n\n"
    "def test_pool():\n"
    "    for _ in range(HOG_FORKS):\n"
    "        if os.fork() == 0:\n"
    "            held = b'x' * (300 << 20)\n"
    "            time.sleep(1000)\n"
    "    held = b'x' * (300 << 20)\n"
    "    time.sleep(1000)\n"
)
HONEST = "def test_add():\n    assert 2 + 3 == 5\n"


def run(source: str, settings: Settings) -> tuple[RunOutcome, str, str | None]:
    rd = make_run_dir(settings)
    try:
        (rd.work / "test_it.py").write_text(source)
        outcome = run_pytest(rd, ["test_it.py"], ["test_it.py"], Limits.from_settings(settings, 30), settings)
        extra = str(sum(f.stat().st_size for f in rd.work.glob("blob*")))
        _outcomes, summary = decide(outcome, ["test_it.py"], 30)
        return outcome, f"{summary.status} {summary.status_message or ''}".strip(), extra
    finally:
        remove_run_dir(rd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-mb", type=int, default=64)
    parser.add_argument("--memory-mb", type=int, default=768)
    parser.add_argument("--runner", default="warm", choices=["warm", "cold"])
    parser.add_argument("--hog-processes", type=int, default=6)
    parser.add_argument("--cgroup-root", default=None, help="SANDBOX_CGROUP_ROOT (a plain dir forces the polling)")
    parser.add_argument("--skip-disk", action="store_true")
    args = parser.parse_args()
    hog_source = HOG.replace("HOG_FORKS", str(args.hog_processes - 1))
    root = Path(tempfile.mkdtemp(prefix="bench-contain-"))
    os.chmod(root, 0o755)
    settings = Settings(sandbox_root=root, sandbox_disk_mb=args.disk_mb, sandbox_run_memory_mb=args.memory_mb,
                        sandbox_runner=args.runner, sandbox_cgroup_root=args.cgroup_root)  # type: ignore[arg-type]  # fmt: skip
    run(HONEST, settings)  # the runtime and the warm runner, once
    figures: dict[str, object] = {"runner": args.runner}
    if not args.skip_disk:
        free_before = shutil.disk_usage(root).free
        with ThreadPoolExecutor(max_workers=2) as pool:
            filler = pool.submit(run, FILLER, settings)
            honest = pool.submit(run, HONEST, settings)
            (_, fill_verdict, written), (_, honest_verdict, _) = filler.result(), honest.result()
        figures["disk"] = {
            "space_mb": args.disk_mb,
            "filler_wrote_mb": round(int(written or 0) / 2**20, 1),
            "filler": fill_verdict,
            "host_free_change_mb": round((shutil.disk_usage(root).free - free_before) / 2**20, 1),
            "honest_beside": honest_verdict,
        }
    with ThreadPoolExecutor(max_workers=2) as pool:
        hog = pool.submit(run, hog_source, settings)
        honest = pool.submit(run, HONEST, settings)
        (hog_outcome, hog_verdict, _), (_, honest_verdict, _) = hog.result(), honest.result()
    figures["memory"] = {
        "budget_mb": args.memory_mb,
        "bound": hog_outcome.memory_bound,
        "asked_mb": args.hog_processes * 300,
        "peak_mb": round(hog_outcome.memory_peak / 2**20, 1),
        "hog": hog_verdict,
        "hog_wall_s": round(hog_outcome.duration, 2),
        "honest_beside": honest_verdict,
    }
    print(json.dumps(figures, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
