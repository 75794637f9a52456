"""The one exception type that separates an infrastructure failure from a student's failure.

A student's failing test, exception or timeout is a *result* (a report). A failed clone, a missing commit, a
refused URL or a crashed runner is an `InfrastructureError`: the engines turn it into FAILURE/FAILED with this
message, and the gateway writes the legacy error shape `{"<engine>_exception": ..., "message": ...}`.
"""

from __future__ import annotations


class InfrastructureError(RuntimeError):
    """The run could not produce a report; `message` is safe to show (no secrets)."""

    def __init__(self, message: str, *, kind: str = "infrastructure") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class BadJobError(InfrastructureError):
    """The job itself is unacceptable (refused URL, option-like ref, malformed commit): refused before git runs."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="bad_input")
