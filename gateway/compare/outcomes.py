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
    # The comparator itself raised: recorded, never breaks the reconciler or a request.
    COMPARE_ERROR = "compare_error"


class Side(StrEnum):
    PRIMARY = "primary"
    SHADOW = "shadow"
    BOTH = "both"
