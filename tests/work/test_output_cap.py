"""Output beyond the cap is truncated and said so; it never changes a verdict (issue 23, part 2).

Before: stdout and stderr were files under the run's RLIMIT_FSIZE, so pytest's own summary of a failing test
that printed a lot hit the per-file limit, the launcher exited 3, and the exit status that disagreed with the
session's end read as tampering (score 0 instead of 1/3). Now they are pipes the worker drains to the cap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backends.work.report import report_score
from backends.work.student_testing import run_student_testing
from common.settings import get_settings


@pytest.fixture(autouse=True, params=["warm", "cold"])
def runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> str:
    monkeypatch.setenv("SANDBOX_RUNNER", request.param)
    get_settings.cache_clear()
    return str(request.param)


def test_failing_tests_printing_past_the_file_limit_keep_their_grade(
    make_job: Callable[..., Any], settings_for: Any
) -> None:
    # Each failing test prints 0.75 MiB (under the 1 MiB per-file limit, so the test's own capture works);
    # pytest's summary then writes both, 1.5 MiB, to stdout: past the per-file limit were stdout a file.
    tests = {
        "test_noise.py": (
            "from calc import add\n\n"
            "def test_ok():\n    assert add(1, 1) == 2\n\n"
            "def test_loud_one():\n    print('x' * (3 << 18))\n    assert add(2, 2) == 5\n\n"
            "def test_loud_two():\n    print('y' * (3 << 18))\n    assert add(3, 3) == 7\n"
        )
    }
    student = {"calc.py": "def add(a, b):\n    return a + b\n"}
    settings = settings_for(sandbox_max_file_mb=1, sandbox_output_cap_bytes=64 * 1024)
    report = run_student_testing(make_job(tests, student), settings=settings)
    assert report["status"] == "COMPLETED", report["statusMessage"]
    assert report["summary"] == {"total": 3, "passed": 1, "failed": 2, "skipped": 0}
    assert report_score(report) == pytest.approx(1 / 3)
    assert report["properties"]["outputTruncated"]["stdout"] > 1 << 20  # said so, in bytes not kept
