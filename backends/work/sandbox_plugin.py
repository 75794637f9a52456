"""A tiny pytest plugin that runs INSIDE the sandbox (copied there; it must import nothing from `backends`).

It appends one JSON line per event to the file named by `GATEWAY_PROGRESS_FILE`: the collected test ids, then
one line per finished test with its outcome and message. The parent tails that file for live progress
("running k of n"), and when the run is cut short (time limit, abrupt exit) it still knows which tests finished
and how, since pytest writes its JUnit XML only at the very end.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_MAIN_PID = os.getpid()
_PATH = os.environ.get("GATEWAY_PROGRESS_FILE")


def _write(record: dict[str, Any]) -> None:
    if not _PATH or os.getpid() != _MAIN_PID:
        return
    with open(_PATH, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message)
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2])  # a skip: (file, line, reason)
    return str(report.longrepr or "")[-2000:]


def pytest_collection_finish(session: pytest.Session) -> None:
    _write({"event": "collected", "nodeids": [item.nodeid for item in session.items]})


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _write({"event": "start", "nodeid": nodeid})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _write({"event": "test", "nodeid": report.nodeid, "outcome": report.outcome, "message": _message(report)})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    yield
    if os.getpid() != _MAIN_PID:
        # A fork of the test process that returned into pytest: it must not run further tests or rewrite XML.
        os._exit(1)
