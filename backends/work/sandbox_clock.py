"""The CPU clock of a run's tests (copied into the sandbox as `gateway_clock.py`; standard library and pytest only).

Why CPU time: a grade must be a function of the submission, not of the machine's load. The wall clock of a run
stretches with every other process on the machine (a loaded worker made students at 60-70 % of the limit flip
between COMPLETED and TIMEDOUT); the CPU time the test process spends computing does not. So the assignment's
time limit (`executionTimeLimit`) is enforced here as CPU time, counted from the start of the pytest session:
interpreter start-up, imports of pytest and the sandbox's setup are not the student's and are not counted. The
wall clock is still limited, generously, by the worker (`sandbox.run_pytest`), for what CPU time cannot see: a
sleep, a deadlock, a wait on input.

At `pytest_sessionstart` (before any test module is collected) the plugin arms `ITIMER_PROF` (process CPU time,
all threads, microsecond resolution; SIGPROF's default action ends the process) for exactly the limit plus its
measurement tolerance (`SANDBOX_CPU_TOLERANCE`: the same computation costs more CPU time beside other busy
processes, so the clock cuts at limit × (1 + tolerance); the worker hands the plugin that figure) and lowers
`RLIMIT_CPU` to the whole second after it, plus one, as a backstop that a student cannot disarm (the
hard limit is lowered with it, and a process without privileges cannot raise it again). Processes the tests
start inherit `RLIMIT_CPU` (each with its own count); the wall clock bounds them together.
"""

from __future__ import annotations

import math
import resource
import signal
from typing import Any

import pytest


def cpu_used() -> float:
    """CPU time (user + system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def arm(seconds: float) -> None:
    """From now on, `seconds` of CPU time for this process: SIGPROF then, SIGXCPU/SIGKILL a second later."""
    backstop = math.ceil(cpu_used() + seconds) + 1
    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard == resource.RLIM_INFINITY or backstop + 1 <= hard:
        resource.setrlimit(resource.RLIMIT_CPU, (backstop, backstop + 1))
    signal.setitimer(signal.ITIMER_PROF, max(seconds, 0.001))


def disarm() -> None:
    """The tests are over: pytest's summary and JUnit XML are not the student's time (the backstop stays)."""
    signal.setitimer(signal.ITIMER_PROF, 0)


class CpuClock:
    """The plugin: arms the CPU clock when the session starts, before collection imports any student module, and
    stops it when the tests are over, before the verdict's `end` (a clock firing after the last test, while
    pytest writes its summary, once made an honest run's exit status disagree with its session's)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: Any) -> None:
        arm(self._seconds)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        disarm()
