"""The worker's decision on a run, from the verdict channel only; files the run wrote never decide.

Input: the lines that arrived on the pipe (`sandbox_plugin` speaks the protocol), how the process ended, and the
JUnit XML if one was left in `/out`. Rules, in order:
- the wall-clock limit hit (counted from the session's start) → finished tests keep their channel verdict, the
  rest TIMEDOUT; if every collected test had finished, the run is not TIMEDOUT at all (a session cut while it
  wrote its summary, or in a fixture's final teardown, is graded by its tests);
- the channel broke its protocol (a line without the guard's HMAC for its place in the sequence, a line that
  is not an event, an unknown test, a test reported twice, anything after `end`, a flood), the plugin reported
  a `tamper` event, the exit status disagrees with `end`, or the JUnit XML disagrees with the channel, is not
  JUnit or is missing after tests ran → **tampering**: every test CRASHED/FAILED (score 0) and the root says
  why; never PASSED;
- no `end` (the process died: a limit's signal, `os._exit`, killed) → finished tests keep their verdict, the
  rest CRASHED (or TIMEDOUT for the CPU clock's SIGPROF / SIGXCPU: the time limit, as CPU time); with nothing
  collected and no collection error, the runner itself broke → `InfrastructureError`;
- otherwise the channel's verdicts, as the legacy report wants them (`report.py`).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from backends.work.errors import InfrastructureError
from backends.work.report import (
    COMPLETED,
    CRASHED,
    FAILED,
    PASSED,
    SKIPPED,
    TIMEDOUT,
    RunSummary,
    TestOutcome,
    outcomes_from_junit,
)
from backends.work.sandbox import RunOutcome, signed_body

# Signals that mean "a limit stopped the student's code", not "the runner broke".
_LIMIT_SIGNALS = {signal.SIGXCPU: "CPU time limit", signal.SIGPROF: "CPU time limit",
                  signal.SIGKILL: "killed (resource limit)", signal.SIGXFSZ: "file size limit",
                  signal.SIGSEGV: "segmentation fault"}  # fmt: skip
_CPU_SIGNALS = (signal.SIGXCPU, signal.SIGPROF)  # the time limit's CPU clock (`sandbox_clock`)
TAMPERING = "tampering detected"
_RAN_TESTS = (0, 1)  # pytest.ExitCode.OK, TESTS_FAILED
_INTERRUPTED = 2  # pytest.ExitCode.INTERRUPTED: collection errors stop the session before any test
_SPACE_FULL = "the run's writable space was full: the session's summary (JUnit XML) could not be written"


class Event(StrEnum):
    START = "start"
    COLLECT_ERROR = "collect_error"
    COLLECTED = "collected"
    TEST = "test"
    TAMPER = "tamper"
    END = "end"


class _Phase(StrEnum):
    SETUP = "setup"
    CALL = "call"
    TEARDOWN = "teardown"


@dataclass
class Channel:
    """The channel's content, checked against the protocol; `problems` lists every violation found."""

    collected: list[str] = field(default_factory=list)
    announced: bool = False  # the `collected` event arrived
    collect_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # nodeid -> phase -> event
    end_status: int | None = None
    problems: list[str] = field(default_factory=list)


def read_channel(lines: list[bytes], key: bytes, flooded: bool = False) -> Channel:
    """Parse and check the channel's lines in order; a line without the guard's HMAC for its place in the
    sequence was not written by the guard."""
    channel = Channel()
    if flooded:
        channel.problems.append("the verdict channel was flooded")
    seen_collected = False
    signed = 0
    for number, line in enumerate(lines, 1):
        if channel.end_status is not None:
            channel.problems.append("data on the verdict channel after the end of the session")
            break
        body = signed_body(line, key, signed)
        if body is None:
            channel.problems.append(f"line {number} of the verdict channel was not written by the runner")
            continue
        signed += 1
        try:
            record = json.loads(body)
            kind = Event(record["event"])
        except (ValueError, KeyError, TypeError):
            channel.problems.append(f"line {number} of the verdict channel is not an event")
            continue
        if kind is Event.TAMPER:
            channel.problems.append(str(record.get("reason", "tampering reported by the runner"))[:300])
        elif kind is Event.COLLECT_ERROR:
            channel.collect_errors[str(record.get("nodeid"))] = record
        elif kind is Event.COLLECTED:
            nodeids = record.get("nodeids")
            if seen_collected or not isinstance(nodeids, list) or len(set(map(str, nodeids))) != len(nodeids):
                channel.problems.append("the collected tests were announced twice or malformed")
                continue
            seen_collected = channel.announced = True
            channel.collected = [str(n) for n in nodeids]
        elif kind is Event.TEST:
            nodeid, when = str(record.get("nodeid")), record.get("when")
            if nodeid not in channel.collected or when not in set(_Phase):
                channel.problems.append(f"a result for a test that was not collected: {nodeid[:200]}")
                continue
            phases = channel.results.setdefault(nodeid, {})
            if when in phases:
                channel.problems.append(f"test {nodeid[:200]} was reported twice")
                continue
            phases[str(when)] = record
        elif kind is Event.END:
            status = record.get("exitstatus")
            channel.end_status = status if isinstance(status, int) else -1
    return channel


def _file_and_name(nodeid: str) -> tuple[str, str]:
    file, _, rest = nodeid.partition("::")
    return file, rest or file


def _test_outcome(nodeid: str, phases: dict[str, dict[str, Any]]) -> TestOutcome | None:
    """The legacy verdict of one test from its phase reports; None when it never finished."""
    file, name = _file_and_name(nodeid)
    setup, call, teardown = (phases.get(p) for p in _Phase)

    def failed(event: dict[str, Any]) -> TestOutcome:
        return TestOutcome(file, name, "FAILED", FAILED, str(event.get("message", "")), str(event.get("details", "")),
                           float(event.get("duration") or 0.0))  # fmt: skip

    if setup is not None and setup.get("outcome") == "failed":
        return failed(setup)
    if setup is not None and setup.get("outcome") == "skipped":
        return TestOutcome(file, name, SKIPPED, SKIPPED, str(setup.get("message", "")))
    if call is None:
        return None
    duration = float(call.get("duration") or 0.0)
    if call.get("outcome") == "failed":
        return TestOutcome(file, name, COMPLETED, FAILED, str(call.get("message", "")), str(call.get("details", "")),
                           duration)  # fmt: skip
    if teardown is not None and teardown.get("outcome") == "failed":
        return failed(teardown)
    if call.get("outcome") == "skipped":
        return TestOutcome(file, name, SKIPPED, SKIPPED, str(call.get("message", "")))
    return TestOutcome(file, name, COMPLETED, PASSED, duration=duration)


def _collect_error_outcomes(channel: Channel) -> list[TestOutcome]:
    return [
        TestOutcome(*_file_and_name(nodeid), "FAILED", FAILED, str(e.get("message", "")), str(e.get("details", "")))
        for nodeid, e in channel.collect_errors.items()
    ]


def _cut(channel: Channel, test_files: list[str], status: str, message: str) -> list[TestOutcome]:
    """A run cut short: finished tests keep their verdict, the first unfinished one gets `message`, later ones
    'not run'."""
    outcomes = _collect_error_outcomes(channel)
    if not channel.collected and not outcomes:
        return [TestOutcome(f, f, status, FAILED, message) for f in test_files]
    cut_seen = False
    for nodeid in channel.collected:
        done = _test_outcome(nodeid, channel.results.get(nodeid, {}))
        if done is None:
            file, name = _file_and_name(nodeid)
            outcomes.append(TestOutcome(file, name, status, FAILED, message if not cut_seen else f"not run: {message}"))
            cut_seen = True
        else:
            outcomes.append(done)
    return outcomes


def _all_finished(channel: Channel) -> bool:
    """Collection ended and every collected test reported its verdict (a teardown may still have been running)."""
    return channel.announced and all(_test_outcome(n, channel.results.get(n, {})) for n in channel.collected)


def _junit_disagrees(xml: str, outcomes: list[TestOutcome]) -> str | None:
    try:
        cases = outcomes_from_junit(xml)
    except Exception:  # noqa: BLE001 - anything unparseable was not written by pytest alone
        return "the JUnit XML is not pytest's"
    files: dict[tuple[str, str], str] = {}
    for case in cases:
        key = (case.file, case.name)
        files[key] = FAILED if FAILED in (files.get(key), case.result) else case.result
    channel = {(o.file, o.name): o.result for o in outcomes}
    if files != channel:
        return "the JUnit XML disagrees with the verdict channel"
    return None


def _tampered(channel: Channel, test_files: list[str], reasons: list[str]) -> tuple[list[TestOutcome], RunSummary]:
    message = f"{TAMPERING}: {'; '.join(dict.fromkeys(reasons))}"[:1000]
    names = [_file_and_name(n) for n in channel.collected] or [(f, f) for f in test_files]
    names += [_file_and_name(n) for n in channel.collect_errors]
    return [TestOutcome(f, n, CRASHED, FAILED, message) for f, n in names], RunSummary(
        status=CRASHED, status_message=message
    )


def _cpu_message(limit: float, allowance: float) -> str:
    """The CPU clock's verdict, naming where it cut when that was past the limit (its measurement tolerance)."""
    message = f"CPU time limit of {limit:g}s exceeded (the time limit counts the tests' CPU time"
    if allowance > limit:
        message += f"; cut at {allowance:g}s, the limit plus its {allowance / limit - 1:.0%} measurement tolerance"
    return message + ")"


def decide(outcome: RunOutcome, test_files: list[str], time_limit: float) -> tuple[list[TestOutcome], RunSummary]:
    """Outcomes and the run's status; raises `InfrastructureError` when the runner broke before any test."""
    channel = read_channel(outcome.channel, outcome.channel_key, outcome.channel_flooded)
    if outcome.memory_exceeded:
        # The run passed its memory limit (the kernel killed a process of its cgroup, or the worker's watch saw
        # it): that is the verdict, whether or not the session still reported its end before the worker looked.
        if channel.problems:
            return _tampered(channel, test_files, channel.problems)
        message = f"test process stopped: memory limit of the run ({outcome.memory_limit >> 20} MiB) exceeded"
        return _cut(channel, test_files, CRASHED, message), RunSummary(status=CRASHED, status_message=message)
    if outcome.timed_out:
        if channel.problems:
            return _tampered(channel, test_files, channel.problems)
        if _all_finished(channel):
            # Every test had its verdict: what was cut is the session's tail, never the student's time.
            return _cut(channel, test_files, TIMEDOUT, ""), RunSummary()
        wall = outcome.wall_limit or time_limit
        message = (f"time limit exceeded: {wall:g}s of wall-clock time (the tests waited rather than computed: "
                   f"a sleep, a deadlock or a read from input)")  # fmt: skip
        return _cut(channel, test_files, TIMEDOUT, message), RunSummary(status=TIMEDOUT, status_message=message)
    if channel.end_status is None:
        if channel.problems:
            return _tampered(channel, test_files, channel.problems)
        if outcome.space_full and _all_finished(channel):
            # pytest died writing its summary into a disk the student's code filled: the tests had their verdicts.
            return _cut(channel, test_files, CRASHED, ""), RunSummary(status_message=_SPACE_FULL)
        sig = outcome.signal
        if sig in _CPU_SIGNALS and _all_finished(channel):
            # The CPU clock ran out after the last test's verdict: the tests, not the session's tail, are graded.
            return _cut(channel, test_files, TIMEDOUT, ""), RunSummary()
        if sig is not None and sig in _LIMIT_SIGNALS:
            if sig in _CPU_SIGNALS:
                message = _cpu_message(outcome.cpu_limit or time_limit, outcome.cpu_allowance)
            else:
                message = f"test process stopped: {_LIMIT_SIGNALS[sig]}"
            status = TIMEDOUT if sig in _CPU_SIGNALS else CRASHED
            return _cut(channel, test_files, status, message), RunSummary(status=status, status_message=message)
        if channel.collected or channel.collect_errors:
            message = f"test process exited abruptly (exit code {outcome.returncode})"
            return _cut(channel, test_files, CRASHED, message), RunSummary(status=CRASHED, status_message=message)
        tail = (outcome.stderr or outcome.stdout).strip().splitlines()
        detail = tail[-1] if tail else "no output"
        raise InfrastructureError(f"test runner crashed (exit code {outcome.returncode}): {detail[:300]}")
    problems = list(channel.problems)
    if outcome.returncode != channel.end_status:
        problems.append(f"the exit status {outcome.returncode} disagrees with the session's {channel.end_status}")
    interrupted = channel.end_status == _INTERRUPTED
    if interrupted and not channel.collect_errors and not problems:
        # pytest stopped before all tests ran (a KeyboardInterrupt or pytest.exit from the test's code).
        message = "the test session was interrupted"
        return _cut(channel, test_files, CRASHED, message), RunSummary(status=CRASHED, status_message=message)
    outcomes = _collect_error_outcomes(channel)
    for nodeid in channel.collected:
        done = _test_outcome(nodeid, channel.results.get(nodeid, {}))
        if done is not None:
            outcomes.append(done)
        elif not interrupted:  # with collection errors pytest runs nothing, as the legacy report had it
            problems.append(f"test {nodeid[:200]} never reported a result")
    if outcome.junit_xml is not None and not problems:
        disagreement = _junit_disagrees(outcome.junit_xml, outcomes)
        if disagreement:
            problems.append(disagreement)
    elif outcome.junit_xml is None and channel.end_status in _RAN_TESTS and not outcome.space_full:
        # pytest writes the XML before the session's end event: a session that "ended" without it was not pytest's.
        problems.append("the session ended without the JUnit XML pytest writes before its end")
    if problems:
        return _tampered(channel, test_files, problems)
    return outcomes, RunSummary()
