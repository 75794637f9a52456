"""What a Celery result row means (issues 12.11, 25.4): never record a result the gateway did not understand.

An old worker (the platform's Celery-era task code) on the gateway's queues stores a pickled
`{"success": ..., "results": {...}}`; the gateway refuses to unpickle, and takes the legacy shape, even as JSON,
for the foreign result it is: an infrastructure error like anything else that is not its report, never a graded
run and never the legacy `score`.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from backends.celery.adapter import CeleryAdapter
from backends.celery.states import PICKLED, Undecodable, decode_result, verdict_of_success
from backends.interface import LegPhase

pytestmark = pytest.mark.fast

REPORT = {"name": "r", "summary": {"total": 4, "passed": 3, "failed": 1, "skipped": 0}, "tests": []}
LEGACY_OK = {"success": True, "results": {**REPORT, "score": 0.75}}
LEGACY_BROKEN = {"success": False, "results": {}, "error": "Git clone of student repository failed."}


def stored(value: Any, serializer: str) -> bytes:
    """What a worker with that result serializer writes into `celery_taskmeta.result`."""
    return pickle.dumps(value, protocol=4) if serializer == "pickle" else json.dumps(value).encode()


@pytest.mark.parametrize(
    ("raw", "error_type", "error"),
    [
        (stored(REPORT, "json"), None, None),  # the gateway's own worker
        (stored(LEGACY_OK, "json"), "BadResult", "not the gateway's"),  # the platform's worker, even with JSON
        (stored({"success": True, "results": {"score": 1}}, "json"), "BadResult", "not the gateway's"),
        (stored(LEGACY_BROKEN, "json"), "BadResult", "not the gateway's"),
        (stored(LEGACY_OK, "pickle"), "UndecodableResult", "pickle"),  # never unpickled
        (stored(None, "json"), "BadResult", "not a report"),
        (stored(0.0, "json"), "BadResult", "not a report"),
        (b"\xff\xfe not json", "UndecodableResult", "neither JSON nor text"),
        (b"{broken", "UndecodableResult", "not JSON"),
    ],
)
def test_a_success_row_is_a_report_or_an_infrastructure_error(
    raw: bytes, error_type: str | None, error: str | None
) -> None:
    result = CeleryAdapter._result_of("leg", ("SUCCESS", decode_result(raw)))
    assert result.score is None  # no worker's own score is ever a grade
    if error is None:
        assert result.phase is LegPhase.SUCCEEDED and result.error is None and result.report is not None
    else:
        assert result.phase is LegPhase.FAILED and result.report is None and result.error_type == error_type
        assert result.error is not None and error in result.error


def test_a_pickled_value_is_never_loaded() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (pytest.fail, ("the gateway unpickled a stored result",))

    assert decode_result(pickle.dumps(Boom())) == Undecodable(PICKLED)


def test_a_pickled_failure_is_failed_with_the_reason() -> None:
    result = CeleryAdapter._result_of("leg", ("FAILURE", decode_result(stored({"exc_type": "X"}, "pickle"))))
    assert result.phase is LegPhase.FAILED and result.error == PICKLED


def test_a_legacy_score_is_never_a_grade() -> None:
    for results in ({"score": 80}, {"score": 0.8, "summary": {"total": 1, "passed": 0}}, {"score": True}):
        verdict = verdict_of_success({"success": True, "results": results})
        assert verdict.report is None and verdict.error_type == "BadResult"
