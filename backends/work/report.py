"""The legacy report tree (`result_json`), built whole in memory from the outcomes `verdict.decide` settled.

Shape (legacy-contract.md "The test report"): the same node at every level, the top level holding one
*collection* per test file, each collection holding single tests. Per test:
- passed → status COMPLETED, result PASSED; failed assert or exception in the test → COMPLETED, FAILED
  (the test ran to a verdict); an error outside the test body (fixture, collection: e.g. a syntax error in the
  student's file) → FAILED, FAILED; skipped → SKIPPED, SKIPPED;
- the time limit hit → TIMEDOUT, FAILED; the test process vanished mid-test (student code exited or was killed
  by a limit) → CRASHED, FAILED.
`resultMessage` carries the assertion/exception message. Nothing here writes anywhere: a report is either
returned complete or not at all.
"""

from __future__ import annotations

import platform
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.scoring import score

PASSED, FAILED, SKIPPED = "PASSED", "FAILED", "SKIPPED"
COMPLETED, TIMEDOUT, CRASHED = "COMPLETED", "TIMEDOUT", "CRASHED"
_MESSAGE_CAP = 4000


@dataclass
class TestOutcome:
    """One test's verdict, whichever source it came from."""

    __test__ = False

    file: str
    name: str
    status: str
    result: str
    message: str = ""
    details: str = ""
    duration: float = 0.0


@dataclass
class RunSummary:
    """Facts about the whole run that the root node reports."""

    duration: float = 0.0
    status: str = COMPLETED
    status_message: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    # The run's effective environment (backends.work.environment); the minimal one when not known.
    environment: dict[str, Any] | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _cap(text: str | None) -> str:
    text = (text or "").strip()
    return text if len(text) <= _MESSAGE_CAP else text[:_MESSAGE_CAP] + " [truncated]"


def _summary(tests: Iterable[TestOutcome]) -> dict[str, int]:
    items = list(tests)
    return {
        "total": len(items),
        "passed": sum(t.result == PASSED for t in items),
        "failed": sum(t.result == FAILED for t in items),
        "skipped": sum(t.result == SKIPPED for t in items),
    }


def _verdict(summary: dict[str, int]) -> str:
    if summary["failed"]:
        return FAILED
    if summary["total"] and summary["skipped"] == summary["total"]:
        return SKIPPED
    return PASSED if summary["passed"] else FAILED


def _node(name: str, type_: str, status: str, result: str, summary: dict[str, int], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": type_,
        "status": status,
        "result": result,
        "summary": summary,
        "resultMessage": extra.get("resultMessage", ""),
        "statusMessage": extra.get("statusMessage", ""),
        "details": extra.get("details", ""),
        "timestamp": _now(),
        "duration": round(float(extra.get("duration", 0.0)), 4),
        "executionDuration": round(float(extra.get("duration", 0.0)), 4),
        "environment": extra.get("environment", {}),
        "properties": extra.get("properties", {}),
        "debug": extra.get("debug", {}),
        "tests": extra.get("tests", []),
    }


def _worst_status(statuses: Iterable[str]) -> str:
    present = set(statuses)
    for status in (TIMEDOUT, CRASHED, "FAILED"):
        if status in present:
            return status
    return COMPLETED


def build_report(name: str, outcomes: list[TestOutcome], run: RunSummary) -> dict[str, Any]:
    """Assemble the whole tree: collections in file order, tests in run order."""
    by_file: dict[str, list[TestOutcome]] = {}
    for outcome in outcomes:
        by_file.setdefault(outcome.file, []).append(outcome)
    collections = []
    for file, tests in by_file.items():
        summary = _summary(tests)
        nodes = [
            _node(t.name, "test", t.status, t.result, _summary([t]), resultMessage=_cap(t.message),
                  details=_cap(t.details), duration=t.duration)
            for t in tests
        ]  # fmt: skip
        collections.append(
            _node(file, "collection", _worst_status(t.status for t in tests), _verdict(summary), summary,
                  duration=sum(t.duration for t in tests), tests=nodes,
                  resultMessage=f"{summary['passed']} of {summary['total']} tests passed")
        )  # fmt: skip
    summary = _summary(outcomes)
    status = run.status if run.status != COMPLETED else _worst_status(t.status for t in outcomes)
    return _node(
        name, "report", status, _verdict(summary), summary, tests=collections, duration=run.duration,
        resultMessage=f"{summary['passed']} of {summary['total']} tests passed", statusMessage=run.status_message,
        environment=run.environment or {"python": platform.python_version(), "runner": "pytest"},
        properties=run.properties,
    )  # fmt: skip


def report_score(report: dict[str, Any]) -> float:
    """The row's `result` (the one formula in `common.scoring`)."""
    return score(report)


# ------------------------------------------------------------------------------------------------- from JUnit
# Only for the cross-check in `verdict.py`: JUnit XML is a second witness, never the verdict.
def _junit_identity(case: ET.Element) -> tuple[str, str]:
    classname = case.get("classname", "")
    name = case.get("name", "")
    file = case.get("file") or ""
    if not classname:  # a collection error: pytest names the case after the module path
        file = file or (name.replace(".", "/") + ".py")
        return file, file
    parts = classname.split(".")
    module_parts = file[:-3].split("/") if file.endswith(".py") else parts[:1]
    inner = parts[len(module_parts) :]
    if not file:
        file = "/".join(module_parts) + ".py"
    return file, "::".join([*inner, name])


def outcomes_from_junit(xml_text: str) -> list[TestOutcome]:
    """Every <testcase> of pytest's JUnit XML as an outcome; raises `ValueError` on XML that is not JUnit."""
    root = ET.fromstring(xml_text)
    cases = root.iter("testcase")
    result = []
    for case in cases:
        file, name = _junit_identity(case)
        duration = float(case.get("time") or 0.0)
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None:
            message = _e_lines(failure.text or "") or failure.get("message", "")
            outcome = TestOutcome(file, name, COMPLETED, FAILED, message, failure.text or "")
        elif error is not None:
            message = _e_lines(error.text or "") or error.get("message", "")
            outcome = TestOutcome(file, name, "FAILED", FAILED, message, error.text or "")
        elif skipped is not None:
            outcome = TestOutcome(file, name, SKIPPED, SKIPPED, skipped.get("message", ""))
        else:
            outcome = TestOutcome(file, name, COMPLETED, PASSED)
        outcome.duration = duration
        result.append(outcome)
    return result


def _e_lines(text: str) -> str:
    """The `E   ...` lines of pytest's traceback: the whole message (the XML attribute is cut after a few lines),
    and for a collection error the `SyntaxError: ...` the student needs to see."""
    lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
    return "\n".join(lines) if lines else ""
