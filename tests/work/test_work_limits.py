"""The sandbox's limits on hostile or broken student code: the limit hits, the report says so, the caller lives.

The fork-bomb test gives its run a uid range of one uid no other process uses, so its tiny process limit and the
final "nothing of that uid is left" check cannot be disturbed by (or disturb) other runs on the machine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from backends.work.student_testing import run_student_testing
from common.settings import get_settings

from .conftest import processes_of_uid

LOOP_TESTS = {
    "test_loop.py": (
        "from solution import fast, spin\n\n"
        "def test_fast():\n    assert fast() == 1\n\n"
        "def test_spin():\n    spin()\n\n"
        "def test_after():\n    assert fast() == 1\n"
    )
}
LOOP_STUDENT = {"solution.py": "def fast():\n    return 1\n\ndef spin():\n    while True:\n        pass\n"}
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")


@pytest.fixture(autouse=True, params=["warm", "cold"])
def runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> str:
    """Every test here runs on the warm runner and on a cold bwrap run: isolation must hold on both."""
    monkeypatch.setenv("SANDBOX_RUNNER", request.param)
    get_settings.cache_clear()
    return str(request.param)


def _tests(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for c in report["tests"] for t in c["tests"]}


def test_endless_loop_hits_the_time_limit_as_cpu_time(make_job: Callable[..., Any], settings_for: Any) -> None:
    """The time limit is the tests' CPU time from the session's start: an endless computation is cut by it."""
    report = run_student_testing(make_job(LOOP_TESTS, LOOP_STUDENT), settings=settings_for(sandbox_timeout_seconds=2))
    assert report["status"] == "TIMEDOUT"
    assert "CPU time limit of 2s exceeded" in report["statusMessage"]
    tests = _tests(report)
    assert tests["test_fast"]["result"] == "PASSED"
    assert tests["test_spin"]["status"] == "TIMEDOUT" and tests["test_spin"]["result"] == "FAILED"
    assert tests["test_after"]["status"] == "TIMEDOUT" and "not run" in tests["test_after"]["resultMessage"]
    assert report["summary"] == {"total": 3, "passed": 1, "failed": 2, "skipped": 0}


SLEEP_TESTS = {
    "test_wait.py": (
        "from solution import fast, wait\n\ndef test_fast():\n    assert fast() == 1\n\ndef test_wait():\n    wait()\n"
    )
}


def test_a_sleep_hits_the_wall_clock_limit(make_job: Callable[..., Any], settings_for: Any) -> None:
    """What CPU time cannot see (a sleep, a deadlock) the wall clock catches: the time limit × the wall factor."""
    student = {"solution.py": "import time\n\ndef fast():\n    return 1\n\ndef wait():\n    time.sleep(1000)\n"}
    settings = settings_for(sandbox_timeout_seconds=1, sandbox_wall_factor=3, sandbox_wall_min_extra_seconds=0)
    report = run_student_testing(make_job(SLEEP_TESTS, student), settings=settings)
    assert report["status"] == "TIMEDOUT"
    assert "3s of wall-clock time" in report["statusMessage"]
    tests = _tests(report)
    assert tests["test_fast"]["result"] == "PASSED"
    assert tests["test_wait"]["status"] == "TIMEDOUT" and tests["test_wait"]["result"] == "FAILED"


def test_a_run_whose_tests_all_finished_is_not_timed_out(make_job: Callable[..., Any], settings_for: Any) -> None:
    """The last test finishes, then the session lingers (a module fixture's teardown that never returns) until the
    wall clock cuts it: every test has its verdict, so the run is graded by them, not TIMEDOUT at the root."""
    tests = {
        "test_linger.py": (
            "import pytest\nfrom solution import fast, linger\n\n"
            "@pytest.fixture(scope='module', autouse=True)\ndef cleanup():\n    yield\n    linger()\n\n"
            "def test_one():\n    assert fast() == 1\n\n"
            "def test_two():\n    assert fast() == 2\n"
        )
    }
    student = {"solution.py": "import time\n\ndef fast():\n    return 1\n\ndef linger():\n    time.sleep(1000)\n"}
    settings = settings_for(sandbox_timeout_seconds=1, sandbox_wall_factor=3, sandbox_wall_min_extra_seconds=0)
    report = run_student_testing(make_job(tests, student), settings=settings)
    assert report["status"] == "COMPLETED", report["statusMessage"]
    found = _tests(report)
    assert found["test_one"]["result"] == "PASSED"
    assert found["test_two"]["status"] == "COMPLETED" and found["test_two"]["result"] == "FAILED"
    assert report["summary"] == {"total": 2, "passed": 1, "failed": 1, "skipped": 0}


def test_meta_yaml_time_limit_applies(make_job: Callable[..., Any], settings_for: Any) -> None:
    tests = {**LOOP_TESTS, "meta.yaml": "properties:\n  executionTimeLimit: 2\n"}
    report = run_student_testing(make_job(tests, LOOP_STUDENT), settings=settings_for(sandbox_timeout_seconds=120))
    assert report["status"] == "TIMEDOUT" and report["properties"]["timeLimit"] == 2


def test_endless_loop_hits_the_cpu_limit(make_job: Callable[..., Any], settings_for: Any) -> None:
    settings = settings_for(sandbox_timeout_seconds=120, sandbox_cpu_seconds=2)
    report = run_student_testing(make_job(LOOP_TESTS, LOOP_STUDENT), settings=settings)
    assert report["status"] == "TIMEDOUT"
    assert "CPU time limit" in report["statusMessage"]
    assert _tests(report)["test_fast"]["result"] == "PASSED"
    assert _tests(report)["test_spin"]["status"] == "TIMEDOUT"


def test_memory_hog_is_contained(make_job: Callable[..., Any], settings_for: Any) -> None:
    tests = {
        "test_mem.py": (
            "from hog import grab, small\n\n"
            "def test_grab():\n    grab()\n\n"
            "def test_small():\n    assert small() == 3\n"
        )
    }
    student = {
        "hog.py": (
            "def grab():\n    chunks = []\n    while True:\n        chunks.append(bytearray(16 * 1024 * 1024))\n\n"
            "def small():\n    return 3\n"
        )
    }
    report = run_student_testing(make_job(tests, student), settings=settings_for(sandbox_memory_mb=400))
    tests_ = _tests(report)
    assert tests_["test_grab"]["result"] == "FAILED" and "MemoryError" in tests_["test_grab"]["resultMessage"]
    assert tests_["test_small"]["result"] == "PASSED"


def test_file_size_limit(make_job: Callable[..., Any], settings_for: Any) -> None:
    tests = {"test_big.py": "from writer import write\n\ndef test_write():\n    write()\n"}
    student = {"writer.py": "def write():\n    with open('big.bin', 'wb') as f:\n        f.write(b'x' * (3 << 20))\n"}
    report = run_student_testing(make_job(tests, student), settings=settings_for(sandbox_max_file_mb=1))
    assert _tests(report)["test_write"]["result"] == "FAILED"
    assert "File too large" in _tests(report)["test_write"]["resultMessage"]


def test_output_is_capped_and_run_completes(make_job: Callable[..., Any], settings_for: Any) -> None:
    tests = {"test_noise.py": "def test_noise():\n    print('y' * (2 << 20))\n    assert False, 'noisy'\n"}
    report = run_student_testing(make_job(tests, {"x.py": ""}), settings=settings_for(sandbox_output_cap_bytes=1024))
    assert report["summary"]["failed"] == 1
    assert len(_tests(report)["test_noise"]["details"]) <= 4100


@ROOT_ONLY
def test_fork_bomb_is_contained(make_job: Callable[..., Any], settings_for: Any) -> None:
    uid = 61000 + os.getpid() % 3000
    assert processes_of_uid(uid) == []
    tests = {
        "test_bomb.py": (
            "from bomb import exponential, escaping\n\n"
            "def test_exponential():\n    exponential()\n\n"
            "def test_escaping():\n    escaping()\n\n"
            "def test_still_runs():\n    assert 1 + 1 == 2\n"
        )
    }
    student = {
        "bomb.py": (
            "import os, time\n\n"
            "def exponential():\n    while True:\n        os.fork()\n\n"
            "def escaping():\n    while True:\n        if os.fork() == 0:\n            os.setsid()\n"
            "            while True:\n                time.sleep(1)\n"
        )
    }
    settings = settings_for(sandbox_uid_base=uid, sandbox_uid_count=1, sandbox_max_processes=20,
                            sandbox_timeout_seconds=60)  # fmt: skip
    report = run_student_testing(make_job(tests, student), settings=settings)
    tests_ = _tests(report)
    for name in ("test_exponential", "test_escaping"):
        assert tests_[name]["result"] == "FAILED"
        assert "Resource temporarily unavailable" in tests_[name]["resultMessage"] or "BlockingIOError" in (
            tests_[name]["resultMessage"])  # fmt: skip
    assert tests_["test_still_runs"]["result"] == "PASSED"
    # Every process the bomb made is gone, including those that left the process group with setsid().
    assert processes_of_uid(uid) == []


@ROOT_ONLY
def test_sandbox_runs_as_the_unprivileged_user(make_job: Callable[..., Any], settings_for: Any) -> None:
    uid = 64000 + os.getpid() % 1000
    tests = {"test_who.py": "import os\n\ndef test_uid():\n    assert False, f'uid={os.getuid()}'\n"}
    settings = settings_for(sandbox_uid_base=uid, sandbox_uid_count=1)
    report = run_student_testing(make_job(tests, {"x.py": ""}), settings=settings)
    assert f"uid={uid}" in _tests(report)["test_uid"]["resultMessage"]


def _cmdlines(uid: int) -> list[str]:
    found = []
    for pid in processes_of_uid(uid):
        with contextlib.suppress(psutil.Error):
            found.append(" ".join(psutil.Process(pid).cmdline()))
    return found


def _running_pytest(uid: int) -> bool:
    """A process of `uid` started as the cold launcher or forked from the warm runner."""
    return any("launch.py" in cmd or "sandbox_zygote.py" in cmd for cmd in _cmdlines(uid))


@ROOT_ONLY
def test_a_sandbox_dies_with_the_worker_that_owns_it(make_job: Callable[..., Any], tmp_path: Any, runner: str) -> None:
    """A worker SIGKILLed mid-run can no longer enforce the wall-clock limit: the sandbox must not outlive it."""
    import signal
    import subprocess
    import sys
    import time

    uid = 62000 + os.getpid() % 2000
    job = make_job(
        {"test_hang.py": "from solution import hang\n\ndef test_hang():\n    hang()\n"},
        {"solution.py": "import os, time\n\ndef hang():\n    if os.fork() == 0:\n        os.setsid()\n"
                        "    while True:\n        time.sleep(1)\n"},
    )  # fmt: skip
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    code = (
        "import json, sys\nfrom backends.work.student_testing import run_student_testing\n"
        "run_student_testing(json.load(open(sys.argv[1])))\n"
    )
    # A long wall-clock limit, so only the owner's death can end the run within the test's deadline.
    env = {**os.environ, "SANDBOX_TIMEOUT_SECONDS": "600", "SANDBOX_CPU_SECONDS": "600",
           "SANDBOX_UID_BASE": str(uid), "SANDBOX_UID_COUNT": "1"}  # fmt: skip
    worker = subprocess.Popen([sys.executable, "-c", code, str(job_file)], env=env)
    try:
        deadline = time.monotonic() + 60
        # pid 1 (bwrap's or the warm run's init), pytest, the student's child; plus bwrap itself when cold.
        expected = 3 if runner == "warm" else 4
        while not (_running_pytest(uid) and len(processes_of_uid(uid)) >= expected) and time.monotonic() < deadline:
            assert worker.poll() is None, "the run ended before the student's code started"
            time.sleep(0.05)
        assert _running_pytest(uid), "the student's run never started"
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        deadline = time.monotonic() + 30
        while processes_of_uid(uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_of_uid(uid) == [], "the student's processes outlived the worker that started them"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


FILL_TESTS = {
    "test_fill.py": (
        "from solution import fill, honest\n\n"
        "def test_fill():\n    assert fill() == 'ENOSPC'\n\n"
        "def test_honest():\n    assert honest() == 42\n"
    )
}
FILL_STUDENT = {
    "solution.py": (
        "import errno, os\n\n"
        "def fill():\n"
        "    size = os.statvfs('.').f_blocks * os.statvfs('.').f_frsize\n"
        "    assert size <= 16 << 20, size  # the run's own space, not the host's disk\n"
        "    chunk = b'x' * (1 << 20)\n"
        "    for n in range(10_000):\n"
        "        try:\n"
        "            with open(f'blob{n}', 'wb') as handle:\n"
        "                handle.write(chunk)\n"
        "        except OSError as exc:\n"
        "            return errno.errorcode[exc.errno]\n"
        "    return 'never full'\n\n"
        "def honest():\n    return 42\n"
    )
}
HONEST_TESTS = {"test_calc.py": "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"}
HONEST_STUDENT = {"calc.py": "def add(a, b):\n    return a + b\n"}


@ROOT_ONLY
def test_a_run_that_fills_its_disk_fails_alone(make_job: Callable[..., Any], settings_for: Any) -> None:
    """Each run writes into a tmpfs of its own (`sandbox_disk_mb`): filling it gives that run ENOSPC, and an honest
    run beside it is graded as usual. The filler's own verdicts stand (a full disk is not tampering)."""
    from concurrent.futures import ThreadPoolExecutor

    settings = settings_for(sandbox_disk_mb=16)
    filler, honest = make_job(FILL_TESTS, FILL_STUDENT), make_job(HONEST_TESTS, HONEST_STUDENT)
    with ThreadPoolExecutor(max_workers=2) as pool:
        full = pool.submit(run_student_testing, filler, settings=settings)
        fine = pool.submit(run_student_testing, honest, settings=settings)
        full_report, honest_report = full.result(), fine.result()
    assert honest_report["status"] == "COMPLETED" and honest_report["summary"]["passed"] == 1
    tests = _tests(full_report)
    assert tests["test_fill"]["result"] == "PASSED", tests["test_fill"]["resultMessage"]
    assert tests["test_honest"]["result"] == "PASSED"
    assert full_report["status"] == "COMPLETED" and "space was full" in full_report["statusMessage"]


POOL_HOG_TESTS = {
    "test_pool.py": (
        "from hog import pool, small\n\ndef test_pool():\n    pool()\n\ndef test_small():\n    assert small() == 3\n"
    )
}
POOL_HOG = {
    "hog.py": (
        "import os, time\n\n"
        "def pool():\n"
        "    # 6 processes of 300 MiB each: every one within its own RLIMIT_AS, 1.8 GiB together.\n"
        "    for _ in range(5):\n"
        "        if os.fork() == 0:\n"
        "            held = b'x' * (300 << 20)\n"
        "            time.sleep(1000)\n"
        "            os._exit(0)\n"
        "    held = b'x' * (300 << 20)\n"
        "    time.sleep(1000)\n\n"
        "def small():\n    return 3\n"
    )
}


@ROOT_ONLY
def test_a_run_is_held_to_its_total_memory_beside_an_honest_run(
    make_job: Callable[..., Any], settings_for: Any
) -> None:
    """Processes each within RLIMIT_AS but too many together: the worker ends the run at its total budget
    (`sandbox_run_memory_mb`), and an honest run beside it is graded as usual."""
    from concurrent.futures import ThreadPoolExecutor

    settings = settings_for(sandbox_run_memory_mb=768, sandbox_timeout_seconds=60)
    hog, honest = make_job(POOL_HOG_TESTS, POOL_HOG), make_job(HONEST_TESTS, HONEST_STUDENT)
    with ThreadPoolExecutor(max_workers=2) as pool:
        hogging = pool.submit(run_student_testing, hog, settings=settings)
        fine = pool.submit(run_student_testing, honest, settings=settings)
        hog_report, honest_report = hogging.result(), fine.result()
    assert honest_report["status"] == "COMPLETED" and honest_report["summary"]["passed"] == 1
    assert hog_report["status"] == "CRASHED"
    assert "memory limit of the run (768 MiB) exceeded" in hog_report["statusMessage"]
    tests = _tests(hog_report)
    assert tests["test_pool"]["status"] == "CRASHED"
