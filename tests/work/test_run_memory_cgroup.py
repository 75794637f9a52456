"""A run's total memory held by the kernel (its own memory cgroup), beside an honest run; the polled fallback.

Real sandboxes (bwrap, warm and cold), real allocations: a run of many processes, each within its RLIMIT_AS,
asks for far more than its budget together. With a cgroup the kernel never lets the run's charge pass its limit
(`memory.max_usage_in_bytes` / `memory.peak` ≤ budget), the OOM kill is read as "memory limit of the run", and
the honest run graded beside it gets its full score. Where no writable memory cgroup exists (forced here with a
`SANDBOX_CGROUP_ROOT` that is not one), the worker's polling still ends the run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from backends.work.errors import InfrastructureError
from backends.work.sandbox import Limits, RunOutcome, make_run_dir, memory_place, remove_run_dir, run_pytest
from backends.work.sandbox_cgroup import MemoryBound
from backends.work.verdict import decide
from common.settings import Settings, get_settings

HOG = (
    "import os, time\n\n"
    "def test_pool():\n"
    "    # 8 processes of 300 MiB each: every one within its own RLIMIT_AS, 2.4 GiB together.\n"
    "    for _ in range(7):\n"
    "        if os.fork() == 0:\n"
    "            held = b'x' * (300 << 20)\n"
    "            time.sleep(1000)\n"
    "            os._exit(0)\n"
    "    held = b'x' * (300 << 20)\n"
    "    time.sleep(1000)\n\n"
    "def test_after():\n    assert True\n"
)
HONEST = (
    "def add(a, b):\n    return a + b\n\n"
    "def test_add():\n    assert add(2, 3) == 5\n\n"
    "def test_more():\n    assert add(1, 1) == 2\n"
)
BUDGET_MB = 512
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="runs' cgroups and uids need root")


@pytest.fixture(autouse=True, params=["warm", "cold"])
def runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> str:
    """Both runners: the warm runner's keeper and the cold runner's gate each put the run in its group."""
    monkeypatch.setenv("SANDBOX_RUNNER", request.param)
    get_settings.cache_clear()
    return str(request.param)


def _run(source: str, settings: Settings) -> tuple[RunOutcome, str, str]:
    rd = make_run_dir(settings)
    try:
        (rd.work / "test_it.py").write_text(source)
        outcome = run_pytest(rd, ["test_it.py"], ["test_it.py"], Limits.from_settings(settings, 60), settings)
        outcomes, summary = decide(outcome, ["test_it.py"], 60)
        passed = sum(1 for o in outcomes if o.result == "PASSED")
        return outcome, f"{summary.status} {summary.status_message or ''}".strip(), f"{passed}/{len(outcomes)}"
    finally:
        remove_run_dir(rd)


def _hog_beside_honest(settings: Settings) -> tuple[tuple[RunOutcome, str, str], tuple[RunOutcome, str, str]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        hog = pool.submit(_run, HOG, settings)
        honest = pool.submit(_run, HONEST, settings)
        return hog.result(), honest.result()


def _left_groups(settings: Settings) -> list[Path]:
    place = memory_place(settings)
    return [p for d in (place.memory, place.pids) if d is not None for p in d.glob(f"gateway-run-{os.getpid()}-*")]


@ROOT_ONLY
def test_the_kernel_holds_a_run_to_its_memory_beside_an_honest_run(settings_for: Any) -> None:
    settings = settings_for(sandbox_run_memory_mb=BUDGET_MB, sandbox_slots=2)
    place = memory_place(settings)
    if place.bound is MemoryBound.WATCH:
        pytest.skip(f"no writable memory cgroup on this machine: {place.reason}")
    (hog, hog_verdict, _), (honest, honest_verdict, honest_score) = _hog_beside_honest(settings)
    assert hog.memory_bound == place.bound.value
    assert hog.memory_exceeded
    assert 0 < hog.memory_peak <= BUDGET_MB << 20  # the kernel's own record of the most the run held
    assert hog_verdict == f"CRASHED test process stopped: memory limit of the run ({BUDGET_MB} MiB) exceeded"
    assert not honest.memory_exceeded and honest_verdict == "COMPLETED" and honest_score == "2/2"
    assert _left_groups(settings) == []  # every run's group is removed with the run


@ROOT_ONLY
def test_without_a_memory_cgroup_the_worker_polls_the_run(settings_for: Any, tmp_path: Path) -> None:
    """`SANDBOX_CGROUP_ROOT` pointing at a dir that is no memory cgroup: the polled bound is in force and holds."""
    not_a_cgroup = tmp_path / "no-cgroup"
    not_a_cgroup.mkdir()
    settings = settings_for(sandbox_run_memory_mb=BUDGET_MB, sandbox_slots=2, sandbox_cgroup_root=not_a_cgroup)
    place = memory_place(settings)
    assert place.bound is MemoryBound.WATCH and "is not a memory cgroup" in place.reason
    (hog, hog_verdict, _), (honest, honest_verdict, honest_score) = _hog_beside_honest(settings)
    assert hog.memory_bound == MemoryBound.WATCH.value and hog.memory_exceeded
    assert hog_verdict == f"CRASHED test process stopped: memory limit of the run ({BUDGET_MB} MiB) exceeded"
    assert honest_verdict == "COMPLETED" and honest_score == "2/2"
    assert list(not_a_cgroup.iterdir()) == []


@pytest.fixture
def small_parent(settings_for: Any) -> Iterator[Path]:
    """A v1 memory cgroup of 400 MiB under the worker's own, to stand for a worker whose memory ran out."""
    place = memory_place(settings_for())
    if place.bound is not MemoryBound.CGROUP_V1 or place.memory is None:
        pytest.skip(f"needs a writable cgroup v1 memory hierarchy: {place.bound} {place.reason}")
    parent = place.memory / f"gateway-test-parent-{os.getpid()}"
    parent.mkdir()
    try:
        (parent / "memory.limit_in_bytes").write_text(str(400 << 20))
        yield parent
    finally:
        with contextlib.suppress(OSError):
            parent.rmdir()


@ROOT_ONLY
def test_an_oom_kill_from_above_the_run_is_an_infrastructure_error(settings_for: Any, small_parent: Path) -> None:
    """The run's own limit (1024 MiB) is never reached, but the cgroup above it (400 MiB) runs out: the kill says
    nothing of the student, so the run is re-run material, never a "memory limit of the run" grade."""
    settings = settings_for(sandbox_run_memory_mb=1024, sandbox_cgroup_root=small_parent)
    assert memory_place(settings).bound is MemoryBound.CGROUP_V1
    with pytest.raises(InfrastructureError, match="below the run's own limit"):
        _run(HOG.replace("range(7)", "range(2)"), settings)  # 3 × 300 MiB: above 400, below 1024
    assert [p.name for p in small_parent.iterdir() if p.is_dir()] == []
