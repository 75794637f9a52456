"""Celery's state names → the one normalised `LegPhase`, and the stored result → progress, report or error.

Kept apart from the adapter so the mapping is one table a reader can check against the legacy contract.
"""

from __future__ import annotations

import json
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


def decode_result(raw: bytes | memoryview | str | None) -> Any:
    """The `result` column: JSON bytes (JSON is the only serializer accepted)."""
    if raw is None:
        return None
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(raw)
    except ValueError:
        return None


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
