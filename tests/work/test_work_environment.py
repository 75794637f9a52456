"""Every report records the environment its run had: versions, the runtime's distributions, limits, isolation."""

from __future__ import annotations

import importlib.metadata as metadata
from collections.abc import Callable
from typing import Any

from backends.work.student_testing import run_student_testing

TESTS = {"test_ok.py": "from solution import f\n\ndef test_f():\n    assert f() == 1\n"}
STUDENT = {"solution.py": "def f():\n    return 1\n"}


def test_the_report_names_the_effective_environment(make_job: Callable[..., Any], settings_for: Any) -> None:
    settings = settings_for(sandbox_timeout_seconds=7, sandbox_memory_mb=512, sandbox_max_processes=64)
    report = run_student_testing(make_job(TESTS, STUDENT), settings=settings)
    assert report["result"] == "PASSED"
    env = report["environment"]
    assert env["limits"] == {
        "time_seconds": 7.0, "cpu_seconds": 7.0, "cpu_tolerance": settings.sandbox_cpu_tolerance, "wall_seconds": 21.0,
        "memory_mb": 512, "processes": 64, "file_mb": settings.sandbox_max_file_mb,
        "run_memory_mb": settings.sandbox_run_memory_mb,
    }  # fmt: skip
    assert env["pytest"] == metadata.version("pytest") and len(env["distributions"]) == 12
    assert env["isolation"] == settings.sandbox_isolation.value and env["process"] in ("warm", "cold")
    assert env["python"].count(".") == 2 and env["runner"] == "pytest"
    # The same settings give the same environment (nothing in it varies per run).
    assert run_student_testing(make_job(TESTS, STUDENT), settings=settings)["environment"] == env
