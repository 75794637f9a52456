"""The one exception type that separates an infrastructure failure from a student's failure.

A student's failing test, exception or timeout is a *result* (a report). A failed clone, a missing commit, a
refused URL or a crashed runner is an `InfrastructureError`: the engines turn it into FAILURE/FAILED with this
message, and the gateway writes the legacy error shape `{"<engine>_exception": ..., "message": ..., "details": ...}`.

The text a worker raises with is not shown as the message: the gateway classifies it into the fixed sentences
of `common.failures.InfraMessage` (one vocabulary for both engines) and keeps the text under `details`. So a
message here starts with the phrase its failure is known by (e.g. "Git clone of student repository failed: ..."),
and `failure` says what a client will read.
"""

from __future__ import annotations

from common.failures import Failure, describe_failure


class InfrastructureError(RuntimeError):
    """The run could not produce a report; `message` is safe to show (no secrets)."""

    def __init__(self, message: str, *, kind: str = "infrastructure") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind

    @property
    def failure(self) -> Failure:
        """What a client reads of this failure: the stable message of the vocabulary, this text as details."""
        return describe_failure(type(self).__name__, self.message)


class BadJobError(InfrastructureError):
    """The job itself is unacceptable (refused URL, option-like ref, malformed commit): refused before git runs."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="bad_input")
