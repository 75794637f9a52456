"""What a Celery result row means (issue 12.11): never record a result the gateway did not understand.

An old worker (the platform's Celery-era task code) on the gateway's queues stores a pickled
`{"success": ..., "results": {...}}`; the gateway refuses to unpickle, maps the legacy JSON shape, and marks
anything else as an infrastructure error (FAILED, retryable), never as a graded run.
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
    ("raw", "phase", "score", "error"),
    [
        (stored(REPORT, "json"), LegPhase.SUCCEEDED, None, None),  # the gateway's own worker
        (stored(LEGACY_OK, "json"), LegPhase.SUCCEEDED, 0.75, None),  # a legacy worker using JSON
        (stored({"success": True, "results": {"score": 1}}, "json"), LegPhase.SUCCEEDED, 1.0, None),
        (stored(LEGACY_BROKEN, "json"), LegPhase.FAILED, None, "Git clone of student repository failed."),
        (stored({"success": False, "results": None}, "json"), LegPhase.FAILED, None, "reported that the run failed"),
        (stored(LEGACY_OK, "pickle"), LegPhase.FAILED, None, "pickle"),  # never unpickled
        (stored(None, "json"), LegPhase.FAILED, None, "not a report"),
        (stored(0.0, "json"), LegPhase.FAILED, None, "not a report"),
        (b"\xff\xfe not json", LegPhase.FAILED, None, "neither JSON nor text"),
        (b"{broken", LegPhase.FAILED, None, "not JSON"),
    ],
)
def test_a_success_row_is_a_report_or_an_infrastructure_error(
    raw: bytes, phase: LegPhase, score: float | None, error: str | None
) -> None:
    result = CeleryAdapter._result_of("leg", ("SUCCESS", decode_result(raw)))
    assert result.phase is phase
    assert result.score == score
    if error is None:
        assert result.error is None and result.report is not None
    else:
        assert result.report is None and result.error is not None and error in result.error


def test_a_pickled_value_is_never_loaded() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (pytest.fail, ("the gateway unpickled a stored result",))

    assert decode_result(pickle.dumps(Boom())) == Undecodable(PICKLED)


def test_a_pickled_failure_is_failed_with_the_reason() -> None:
    result = CeleryAdapter._result_of("leg", ("FAILURE", decode_result(stored({"exc_type": "X"}, "pickle"))))
    assert result.phase is LegPhase.FAILED and result.error == PICKLED


def test_verdict_clamps_a_legacy_score() -> None:
    assert verdict_of_success({"success": True, "results": {"score": 7}}).score == 1.0
    assert verdict_of_success({"success": True, "results": {"score": True}}).score is None
