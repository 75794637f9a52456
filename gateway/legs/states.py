"""The leg's vocabulary as enums: its role in a job, where it is in the outbox, how it ended.

Stored as these strings in the `leg` table (`role`, `dispatch_state`, `outcome`); `phase` is
`backends.interface.LegPhase`. Being `StrEnum`s, they compare equal to the stored strings.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class LegRole(StrEnum):
    """Why a leg exists. Only a primary leg ever writes the legacy `result` row."""

    PRIMARY = "primary"
    # The same job on the other engine, for comparison: fenced from every side effect.
    SHADOW = "shadow"
    # Submission processing started by a completed primary leg of a `submit=true` row.
    SUBMISSION = "submission"


def is_shadowed_primary(role: str, routing: dict[str, Any] | None) -> bool:
    """A primary leg whose job also runs as shadow legs: its routing record lists them (`routing.shadow.legs`)."""
    return role == LegRole.PRIMARY and bool(((routing or {}).get("shadow") or {}).get("legs"))


def verifier_of(role: str, routing: dict[str, Any] | None) -> str | None:
    """Under the `verified` answer policy, the shadow leg a primary's row waits for (`routing.shadow.verify`)."""
    if role != LegRole.PRIMARY:
        return None
    found = ((routing or {}).get("shadow") or {}).get("verify")
    return str(found) if found else None


class DispatchState(StrEnum):
    """The outbox: a leg is PENDING until its engine accepted it, then SENT; FAILED when it never will be."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class LegOutcome(StrEnum):
    """How a finished leg ended (beside its final `LegPhase`)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CRASHED = "crashed"
    # The gateway stopped waiting: the leg passed its deadline.
    TIMED_OUT = "timed_out"
    # A shadow leg that passed its deadline still queued behind a busy but live worker (`LegState.busy`): the
    # engine was alive and at its limit, so this is neither an infrastructure error nor a sample.
    LATE = "late"
    # The engine refused the job for a reason retrying cannot fix (configuration, a missing deployment).
    REJECTED = "rejected"
    # A flow the gateway did not write reported the end itself (`PATCH /api/results/{id}`).
    SUCCEEDED_BY_WRITE_BACK = "succeeded (write-back)"
    FAILED_BY_WRITE_BACK = "failed (write-back)"
    CANCELLED_BY_WRITE_BACK = "cancelled (write-back)"
    CRASHED_BY_WRITE_BACK = "crashed (write-back)"
