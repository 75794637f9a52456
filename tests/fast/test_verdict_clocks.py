"""The verdict and the clocks: a run whose tests all had their verdict is never TIMEDOUT at the root.

Synthetic channels (what the verdict plugin streams) and process endings: the real runs are in
tests/work/test_work_limits.py; these pin the rule for each clock, including the CPU clock firing after the last
test (seen in bench/bench_load_invariance.py before the clock was stopped at the session's finish).
"""

from __future__ import annotations

import hmac
import json
import signal

import pytest

from backends.work.sandbox import RunOutcome
from backends.work.verdict import decide

pytestmark = pytest.mark.fast

FILES = ["test_a.py"]
KEY = b"k" * 32


def _signed(seq: int, event: dict[str, object]) -> bytes:
    """A channel line as the guard writes it: `<hmac> <json>` over the sequence number and the JSON."""
    body = json.dumps(event).encode()
    return hmac.digest(KEY, str(seq).encode() + b":" + body, "sha256").hex().encode() + b" " + body


def _outcome(finished: int, *, sig: int | None = None, timed_out: bool = False) -> RunOutcome:
    events = [{"event": "start"}, {"event": "collected", "nodeids": ["test_a.py::test_1", "test_a.py::test_2"]}]
    for n in range(1, finished + 1):
        events.append({"event": "test", "nodeid": f"test_a.py::test_{n}", "when": "call", "outcome": "passed",
                       "message": "", "details": "", "duration": 0.1})  # fmt: skip
    return RunOutcome(returncode=None if timed_out else 128 + (sig or 0), signal=sig, timed_out=timed_out, stdout="",
                      stderr="", junit_xml=None, channel=[_signed(n, e) for n, e in enumerate(events)],
                      channel_key=KEY, wall_limit=6.0, cpu_limit=2.0)  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGPROF, signal.SIGXCPU])
def test_the_cpu_clock_after_the_last_test_grades_the_tests(sig: int) -> None:
    outcomes, run = decide(_outcome(2, sig=sig), FILES, 2.0)
    assert run.status == "COMPLETED" and [o.result for o in outcomes] == ["PASSED", "PASSED"]


def test_the_cpu_clock_during_a_test_is_the_time_limit() -> None:
    outcomes, run = decide(_outcome(1, sig=signal.SIGPROF), FILES, 2.0)
    assert run.status == "TIMEDOUT" and "CPU time limit of 2s exceeded" in (run.status_message or "")
    assert [(o.status, o.result) for o in outcomes] == [("COMPLETED", "PASSED"), ("TIMEDOUT", "FAILED")]


def test_the_cpu_clock_names_its_measurement_tolerance() -> None:
    """The clock cuts at the limit plus its tolerance (`SANDBOX_CPU_TOLERANCE`); the message says both figures."""
    outcome = _outcome(1, sig=signal.SIGPROF)
    outcome.cpu_allowance = 3.0
    _outcomes, run = decide(outcome, FILES, 2.0)
    assert run.status == "TIMEDOUT"
    assert "CPU time limit of 2s exceeded" in (run.status_message or "")
    assert "cut at 3s, the limit plus its 50% measurement tolerance" in (run.status_message or "")


def test_the_wall_clock_after_the_last_test_grades_the_tests() -> None:
    outcomes, run = decide(_outcome(2, timed_out=True), FILES, 2.0)
    assert run.status == "COMPLETED" and [o.result for o in outcomes] == ["PASSED", "PASSED"]


def test_the_wall_clock_during_a_test_is_a_timeout() -> None:
    _outcomes, run = decide(_outcome(1, timed_out=True), FILES, 2.0)
    assert run.status == "TIMEDOUT" and "6s of wall-clock time" in (run.status_message or "")
