"""Prefect state types → the normalised `LegPhase`; the state *name* (e.g. "Late", "AwaitingRetry") is kept.

Mapping by type, not name: names are free text (a flow may propose "Late" or a custom name) while the type is
one of nine fixed values. PAUSED maps to RUNNING: a paused run has started and holds its slot, and a waiting
human, not a queue, decides when it goes on (the legacy status integer keeps PAUSED=7 via `result_status`).
"""

from __future__ import annotations

from backends.interface import LegPhase
from common.legacy import ResultStatus

STATE_TYPE_TO_PHASE: dict[str, LegPhase] = {
    "SCHEDULED": LegPhase.QUEUED,
    "PENDING": LegPhase.QUEUED,
    "RUNNING": LegPhase.RUNNING,
    "PAUSED": LegPhase.RUNNING,
    "CANCELLING": LegPhase.CANCELLING,
    "COMPLETED": LegPhase.SUCCEEDED,
    "FAILED": LegPhase.FAILED,
    "CANCELLED": LegPhase.CANCELLED,
    "CRASHED": LegPhase.CRASHED,
}

# Runs still waiting for a runner: what `queue_depths` counts.
WAITING_TYPES = ("SCHEDULED", "PENDING")
ACTIVE_TYPES = ("RUNNING", "PAUSED", "CANCELLING")


def phase_for(state_type: str | None) -> LegPhase:
    """Unknown or missing types are MISSING: the caller's own record decides, never a guess."""
    return STATE_TYPE_TO_PHASE.get((state_type or "").upper(), LegPhase.MISSING)


def legacy_status(state_type: str | None) -> ResultStatus:
    """The legacy integer for a Prefect state type: the names are the same by design of the old platform."""
    try:
        return ResultStatus[(state_type or "").upper()]
    except KeyError:
        return ResultStatus.NOT_AVAILABLE
