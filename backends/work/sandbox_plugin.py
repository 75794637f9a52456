"""The verdict channel: a pytest plugin that runs INSIDE the sandbox (copied there; imports nothing from `backends`).

The worker decides a run's verdict from what arrives on a pipe it created and handed to the launcher, not from
any file in the sandbox. This plugin is registered by the launcher before pytest imports any test or student
module, and streams one JSON line per event on that pipe:

    {"event": "start"}                                        session started (after the reference's conftest)
    {"event": "collect_error", "nodeid", "message", "details"}  a test file could not be imported
    {"event": "collected", "nodeids": [...]}                  what will run, in order
    {"event": "test", "nodeid", "when", "outcome", "message", "details", "duration"}
    {"event": "tamper", "reason"}                             pytest's own machinery was changed from inside
    {"event": "end", "exitstatus"}                            then the pipe is closed

Student code runs in this same process, so nothing here is out of its reach (see docs/work.md, "What cannot be
prevented"). What the plugin does is make the cheap forgeries visible: it remembers, before any student code is
imported, which functions implement pytest's test protocol and which hook implementations are registered, and
reports a `tamper` event when they differ later (a plugin registered from student code, a patched
`Function.runtest`), or when a collected test's code comes from a student file rather than the reference. It
closes the pipe at the end of the session, and the worker treats anything after `end` as tampering.
"""

from __future__ import annotations

import json
import os
from typing import Any

import _pytest.python
import _pytest.reports
import _pytest.runner
import pytest

# Hooks whose implementations decide or carry a verdict; a change to their set after start-up is tampering.
_WATCHED_HOOKS = (
    "pytest_runtest_protocol", "pytest_runtest_setup", "pytest_runtest_call", "pytest_runtest_teardown",
    "pytest_runtest_makereport", "pytest_runtest_logreport", "pytest_pyfunc_call", "pytest_report_teststatus",
    "pytest_collection_modifyitems", "pytest_collectreport", "pytest_make_collect_report",
    "pytest_pycollect_makeitem", "pytest_sessionfinish", "pytest_deselected", "pytest_itemcollected",
)  # fmt: skip
_DETAILS_CAP = 16_000


_MACHINERY = (
    (_pytest.python.Function, "runtest"), (_pytest.python, "pytest_pyfunc_call"), (_pytest.runner, "runtestprotocol"),
    (_pytest.runner, "call_and_report"), (_pytest.runner, "call_runtest_hook"), (_pytest.runner.CallInfo, "from_call"),
    (_pytest.runner, "pytest_runtest_makereport"), (_pytest.reports.TestReport, "from_item_and_call"),
    (_pytest.reports.BaseReport, "passed"), (_pytest.reports.BaseReport, "failed"), (json, "dumps"), (os, "_exit"),
)  # fmt: skip


def _machinery() -> dict[str, object]:
    """The functions that run a test and turn its outcome into a report (those this pytest version has)."""
    return {f"{getattr(owner, '__name__', owner)}.{name}": vars(owner).get(name) for owner, name in _MACHINERY}


def _e_lines(text: str) -> str:
    """The `E   ...` lines of a pytest traceback: the assertion or exception, without the code around it."""
    return "\n".join(line[1:].strip() for line in text.splitlines() if line.startswith("E "))


def _message(report: Any) -> str:
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


class VerdictChannel:
    """The plugin object; one per run, registered by the launcher through `pytest.main(plugins=[...])`."""

    def __init__(self, fd: int, work_dir: str, reference_files: list[str]) -> None:
        self._fd: int | None = fd
        self._write = os.write  # bound now: a later `os.write = ...` from student code does not reach here
        self._dumps = json.dumps
        self._pid = os.getpid()
        self._work = os.path.realpath(work_dir) + os.sep
        self._reference = {os.path.realpath(os.path.join(work_dir, rel)) for rel in reference_files}
        self._machinery = _machinery()
        self._hooks: dict[str, tuple[int, ...]] = {}
        self._config: Any = None
        self._reported: set[str] = set()

    # ---------------------------------------------------------------------------------------------- sending
    def _send(self, record: dict[str, Any]) -> None:
        if self._fd is None or os.getpid() != self._pid:
            return  # a fork of the test process never speaks for the run
        data = (self._dumps(record) + "\n").encode()
        while data:
            written = self._write(self._fd, data)
            data = data[written:]

    def _tamper(self, reason: str) -> None:
        if reason not in self._reported:
            self._reported.add(reason)
            self._send({"event": "tamper", "reason": reason})

    # ---------------------------------------------------------------------------------------------- checks
    def _hook_snapshot(self) -> dict[str, tuple[int, ...]]:
        hook = self._config.pluginmanager.hook
        return {name: tuple(id(i.function) for i in getattr(hook, name).get_hookimpls()) for name in _WATCHED_HOOKS}

    def _check(self) -> None:
        for name, original in self._machinery.items():
            if _machinery()[name] is not original:
                self._tamper(f"pytest's {name} was replaced during the run")
        if self._hooks and self._hook_snapshot() != self._hooks:
            self._tamper("a pytest hook implementation was added or removed during the run")

    def _check_item(self, item: Any) -> None:
        """A test's code must come from a reference file or from outside the work dir (a library)."""
        obj = getattr(item, "obj", None)
        code = getattr(obj, "__code__", None) or getattr(getattr(obj, "__func__", None), "__code__", None)
        if code is None:
            return
        filename = os.path.realpath(code.co_filename)
        if filename.startswith(self._work) and filename not in self._reference:
            self._tamper(f"test {item.nodeid} runs code from a student file")

    # ---------------------------------------------------------------------------------------------- hooks
    def pytest_configure(self, config: pytest.Config) -> None:
        self._config = config

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._hooks = self._hook_snapshot()
        self._send({"event": "start"})

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            text = str(report.longreprtext or "")
            self._send({"event": "collect_error", "nodeid": report.nodeid, "message": _message(report),
                        "details": text[-_DETAILS_CAP:]})  # fmt: skip

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._check()
        for item in session.items:
            self._check_item(item)
        self._send({"event": "collected", "nodeids": [item.nodeid for item in session.items]})

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._check()
        if report.when == "call" or not report.passed:
            self._send({
                "event": "test", "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                "message": _message(report) if not report.passed else "",
                "details": str(report.longreprtext or "")[-_DETAILS_CAP:] if not report.passed else "",
                "duration": float(report.duration),
            })  # fmt: skip

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
        self._check()
        self._send({"event": "end", "exitstatus": int(exitstatus)})
        if self._fd is not None and os.getpid() == self._pid:
            os.close(self._fd)
            self._fd = None
