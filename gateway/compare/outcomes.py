"""The vocabulary of a comparison: its outcome and, for an infrastructure error, the side it happened on."""

from __future__ import annotations

from enum import StrEnum


class ComparisonOutcome(StrEnum):
    MATCH = "match"
    # The engines disagree on something a student or grader cares about (a verdict, a count, the score).
    MISMATCH = "mismatch"
    # A mismatch on tests known to be flaky on this course content only (A/A evidence): not held against the engine.
    NOISE = "noise"
    # A leg failed for a reason that is not the student's (clone failed, crashed, lost, engine error): see `side`.
    INFRA_ERROR = "infra_error"
    # The shadow leg missed its deadline and was no longer waited on.
    SHADOW_TIMEOUT = "shadow_timeout"
    # The shadow leg missed its deadline queued behind a busy but live worker (a Prefect run `Late` while its
    # runner polls, at its limit; a Celery message waiting in a queue a live worker consumes, or reserved by one):
    # waited for, then neither an infrastructure error nor a sample for any gate.
    LATE = "late"
    # The comparator itself raised: recorded, never breaks the reconciler or a request.
    COMPARE_ERROR = "compare_error"


class Side(StrEnum):
    PRIMARY = "primary"
    SHADOW = "shadow"
    BOTH = "both"


# Comparisons that are no evidence about either engine for a gate: no leg counted, no run time, no error (the
# comparator's own failure; a shadow run still queued behind a busy but live worker at its deadline).
NOT_EVIDENCE = frozenset({ComparisonOutcome.COMPARE_ERROR, ComparisonOutcome.LATE})
