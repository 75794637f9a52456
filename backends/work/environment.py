"""The effective environment of one run: what a grade depends on besides the submission, recorded in its report.

Two engines that grade the same submission differently are usually configured differently: a lower time limit,
a lower memory limit, another pytest. So every report says, at its root's `environment`, what the run actually
had: the sandbox's interpreter and pytest versions, a digest of the distributions the run could import, the
limits the run was held to (time, CPU, memory, processes, file size), the isolation, and how its process was
started. The gateway diffs the two legs' environments (`gateway/compare/environment.py`) and names a difference
before any grade is compared. The comparator ignores `environment` for grades (its rules list it), so
recording more here never makes a mismatch.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from functools import lru_cache
from typing import Any

from backends.work.sandbox import Limits
from backends.work.sandbox_runtime import distribution_versions

_MB = 1024 * 1024


@lru_cache(maxsize=8)
def interpreter_version(python: str | None) -> str:
    """The version of the interpreter the sandbox runs (asked once per worker; this one's if it cannot say)."""
    if python:
        try:
            found = subprocess.run(
                [python, "-I", "-S", "-c", "import platform; print(platform.python_version())"],
                capture_output=True, text=True, timeout=10, check=True,
            )  # fmt: skip
            return found.stdout.strip() or platform.python_version()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.python_version()


@lru_cache(maxsize=1)
def runtime_digest() -> tuple[str, str]:
    """(pytest's version, a 12-hex digest of every distribution the run can import, name=version sorted)."""
    versions = distribution_versions()
    tag = ";".join(f"{name}={version}" for name, version in versions)
    pytest_version = dict(versions).get("pytest", "")
    return pytest_version, hashlib.sha256(tag.encode()).hexdigest()[:12]


def limits_dict(limits: Limits) -> dict[str, float | int]:
    return {
        "time_seconds": limits.timeout,
        "cpu_seconds": limits.cpu_seconds,  # the time limit as the tests' CPU time (capped by SANDBOX_CPU_SECONDS)
        "cpu_tolerance": limits.cpu_tolerance,  # the CPU clock cuts at cpu_seconds × (1 + this)
        "wall_seconds": limits.wall_seconds,  # from the session's start, without waits for a CPU
        "run_memory_mb": limits.run_memory_bytes // _MB,
        "memory_mb": limits.memory_bytes // _MB,
        "processes": limits.max_processes,
        "file_mb": limits.max_file_bytes // _MB,
    }


def effective_environment(limits: Limits, isolation: str, runner: str, python: str | None) -> dict[str, Any]:
    """The report's `environment`: everything here is a setting or a version, nothing that varies per run."""
    pytest_version, digest = runtime_digest()
    return {
        "python": interpreter_version(python),
        "runner": "pytest",
        "pytest": pytest_version,
        "distributions": digest,
        "isolation": isolation,
        "process": runner,  # warm (forked from a warm interpreter) or cold (a fresh one)
        "limits": limits_dict(limits),
    }
