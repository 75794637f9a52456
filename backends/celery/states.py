"""Celery's state names → the one normalised `LegPhase`, and the stored result → progress, report or error.

Kept apart from the adapter so the mapping is one table a reader can check against the legacy contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from backends.interface import LegPhase
from common.legacy import Progress

# Native names from celery.states plus our PROGRESS; the native name is always kept beside the phase.
PHASE_FOR_STATE: dict[str, LegPhase] = {
    "PENDING": LegPhase.QUEUED,
    "RECEIVED": LegPhase.QUEUED,
    "RETRY": LegPhase.QUEUED,
    "STARTED": LegPhase.RUNNING,
    "PROGRESS": LegPhase.RUNNING,
    "SUCCESS": LegPhase.SUCCEEDED,
    "FAILURE": LegPhase.FAILED,
    "REVOKED": LegPhase.CANCELLED,
    "REJECTED": LegPhase.CRASHED,
    "IGNORED": LegPhase.CRASHED,
}

# A FAILURE caused by the process dying, not by the work: the leg crashed (never blamed on the student).
CRASH_EXCEPTIONS = {"WorkerLostError"}


def phase_for(state: str, result: Any = None) -> LegPhase:
    """Unknown custom states are treated as running: a task stores them only while it executes."""
    phase = PHASE_FOR_STATE.get(state, LegPhase.RUNNING)
    if phase is LegPhase.FAILED and isinstance(result, dict) and result.get("exc_type") in CRASH_EXCEPTIONS:
        return LegPhase.CRASHED
    return phase


@dataclass(frozen=True)
class Undecodable:
    """A stored value the gateway will not read: never mistaken for a result (None, 0.0, an empty report)."""

    reason: str


# Pickle's protocol marker (protocols 2-5), the first byte of what a worker configured with the pickle
# serializer stores (the legacy platform's Celery workers were).
PICKLE_MARKER = 0x80
PICKLED = (
    "The worker stored its result with pickle (a worker from before the gateway?); the gateway does not unpickle "
    "(loading a pickle runs code chosen by whoever wrote it), so the run's outcome is unknown. Run it again on a "
    "gateway worker."
)


def decode_result(raw: bytes | memoryview | str | None) -> Any:
    """The `result` column: JSON (the only serializer the gateway's workers use), else `Undecodable`."""
    if raw is None:
        return None
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    if isinstance(raw, bytes):
        if raw[:1] == bytes([PICKLE_MARKER]):
            return Undecodable(PICKLED)
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Undecodable("The stored result is neither JSON nor text; the run's outcome is unknown.")
    try:
        return json.loads(raw)
    except ValueError:
        return Undecodable("The stored result is not JSON; the run's outcome is unknown.")


@dataclass(frozen=True)
class Verdict:
    """What a SUCCESS row's result means: the gateway's report, or why it is none."""

    report: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None


FOREIGN = (
    "A worker that is not the gateway's answered (the platform's own `{success, results}` shape, from a worker "
    "on the shared queues); its report and score are not the gateway's, so the run's outcome is unknown. Run it "
    "again on a gateway worker."
)


def verdict_of_success(result: Any) -> Verdict:
    """Read a SUCCESS row: the gateway's own report, or an error (`UndecodableResult`, `BadResult`).

    The platform's Celery worker took the same task name from the same queue and answered `{"success",
    "results"}`, `results` carrying its own `score` (e.g. 80 of 100, which it gave failing students too). That
    is a foreign result, like a pickled one: an infrastructure error, run again (on a gateway worker: the rerun
    avoids the shared queues), never a grade and never its score. Anything that is not a dict is no report.
    """
    if isinstance(result, Undecodable):
        return Verdict(error=result.reason, error_type="UndecodableResult")
    if not isinstance(result, dict):
        return Verdict(error=f"The worker returned {type(result).__name__}, not a report.", error_type="BadResult")
    if "success" in result and "results" in result:
        return Verdict(error=FOREIGN, error_type="BadResult")
    return Verdict(report=result)


def progress_from(result: Any) -> Progress | None:
    """PROGRESS rows store `{"progress": {"percentage", "metadata", "status"}}`."""
    if isinstance(result, dict) and isinstance(result.get("progress"), dict):
        try:
            return Progress.model_validate(result["progress"])
        except ValueError:
            return None
    return None


def error_from(result: Any) -> tuple[str | None, str | None]:
    """(error text, exception type) of a stored exception, e.g. a FAILURE or REVOKED result."""
    if isinstance(result, Undecodable):
        return result.reason, "UndecodableResult"
    if not isinstance(result, dict) or "exc_type" not in result:
        return (None, None) if result is None else (str(result), None)
    exc_type = str(result.get("exc_type"))
    message = result.get("exc_message")
    if isinstance(message, list | tuple):
        message = " ".join(str(part) for part in message)
    text = str(message or "")
    if exc_type != "TaskInfrastructureError":
        text = f"{exc_type}: {text}" if text else exc_type
    return text, exc_type
