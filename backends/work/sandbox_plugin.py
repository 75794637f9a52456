"""The verdict channel: a pytest plugin that runs INSIDE the sandbox (copied there; imports nothing from `backends`).

The worker decides a run's verdict from what arrives on a pipe it created and handed to the launcher, not from
any file in the sandbox. This plugin is registered by the launcher before pytest imports any test or student
module. It holds nothing: each of its hooks raises the audit event `gateway.verdict`, and the guard's audit hook
(`sandbox_guard.py`, armed by the launcher) checks where the event comes from and what has changed since the
session started, and writes one signed JSON line per event on the pipe:

    {"event": "start"}                                        session started (after the reference's conftest)
    {"event": "collect_error", "nodeid", "message", "details"}  a test file could not be imported
    {"event": "collected", "nodeids": [...]}                  what will run, in order
    {"event": "test", "nodeid", "when", "outcome", "message", "details", "duration"}
    {"event": "tamper", "reason"}                             something the student may not touch was touched
    {"event": "end", "exitstatus"}                            the session's end

Student code runs in this same process, so this object, its class and this module are within its reach; none of
them holds anything worth taking (no fd, no key, no snapshot). The message texts are computed here (they are
only text; the guard takes the verdict's fields from the report itself).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

_DETAILS_CAP = 16_000
_audit = sys.audit


def _e_lines(text: str) -> str:
    """The `E   ...` lines of a pytest traceback: the assertion or exception, without the code around it."""
    return "\n".join(line[1:].strip() for line in text.splitlines() if line.startswith("E "))


def report_message(report: Any) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2])  # a skip: (file, line, reason)
    text = str(report.longreprtext or "")
    found = _e_lines(text)
    if found:
        return found
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message)
    return text[-2000:]


def _texts(report: Any) -> tuple[str, str]:
    if report.passed:
        return "", ""
    try:
        return str(report_message(report)), str(report.longreprtext or "")[-_DETAILS_CAP:]
    except Exception as exc:  # noqa: BLE001 - a report whose text cannot be rendered still has a verdict
        return f"(no message: {type(exc).__name__})", ""


class VerdictChannel:
    """The plugin object; one per run, registered by the launcher through `pytest.main(plugins=[...])`."""

    def __init__(self) -> None:
        self._pid = os.getpid()

    def pytest_configure(self, config: pytest.Config) -> None:
        _audit("gateway.verdict", "configure", config)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        _audit("gateway.verdict", "start", session)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            message, details = _texts(report)
            _audit("gateway.verdict", "collect_error", report, message, details, report.nodeid)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        _audit("gateway.verdict", "collected", session.items, [item.nodeid for item in session.items])

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        message, details = _texts(report)
        _audit("gateway.verdict", "test", report, message, details, report.nodeid)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        try:
            return (yield)
        finally:
            if os.getpid() != self._pid:
                # A fork of the test process that returned into pytest: it must not run further tests.
                os._exit(1)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        _audit("gateway.verdict", "end", int(exitstatus))
