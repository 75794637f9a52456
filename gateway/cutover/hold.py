"""An operator's rollback holds: after a manual step back, the gate does not walk the migration forward again.

Without this, the `auto` policy re-promoted a migration 69 s after an operator rolled it back, on evidence the
operator had just judged insufficient. So a manual `demote` or `rollback` (or a `set` to an earlier stage), or an
explicit `pause`, pauses automation for that migration until an operator `resume`s it. Both are events in the
migration's log, and the hold is read from the log (no extra state to drift from it): the newest of those events
decides. A paused migration is still evaluated and shown, and a Failed gate in `canary`/`new_primary` still
demotes (that protects students); only automatic promotion waits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Stage

# The actor of the automatic gate's own steps (its demotions never pause it).
GATE_ACTOR = "gate"


class HoldAction(StrEnum):
    """The two events an operator uses to hold and release automation (beside a manual step back)."""

    PAUSE = "pause"
    RESUME = "resume"


@dataclass(frozen=True)
class LogEntry:
    """What the hold needs of one event of the migration's log."""

    action: str
    actor: str
    at: datetime
    from_stage: str | None
    to_stage: str
    reason: str = ""


@dataclass(frozen=True)
class Hold:
    """Automation is paused: since when, by whom, and by which event."""

    since: datetime
    actor: str
    action: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "actor": self.actor, "action": self.action, "reason": self.reason}

    def describe(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return (
            f"automation paused by {self.actor}'s {self.action} at {self.since.isoformat()[:19]}{why}"
            " (resume with `gateway cutover resume`)"
        )


def _backwards(entry: LogEntry) -> bool:
    if entry.from_stage is None:
        return False
    try:
        return Stage(entry.to_stage).rank < Stage(entry.from_stage).rank
    except ValueError:
        return False


def holds(entry: LogEntry) -> bool | None:
    """True: this event pauses automation; False: it resumes it; None: it says nothing about the hold."""
    if entry.action == HoldAction.RESUME:
        return False
    if entry.action == HoldAction.PAUSE:
        return True
    if entry.actor == GATE_ACTOR:
        return None
    if entry.action in (Action.DEMOTE, Action.ROLLBACK):
        return True
    if entry.action == Action.SET and _backwards(entry):
        return True
    return None


def hold_of(entries: Iterable[LogEntry]) -> Hold | None:
    """The hold in force, from the migration's log newest first (the newest event that says anything decides)."""
    for entry in entries:
        verdict = holds(entry)
        if verdict is None:
            continue
        if not verdict:
            return None
        return Hold(entry.at, entry.actor, entry.action, entry.reason)
    return None
