"""The message vocabulary of infrastructure failures: one stable sentence per failure, whatever the engine.

Why: a legacy client, and the shadow comparator, read `result_json = {"<engine>_exception": ..., "message": ...}`
of a run that broke (a failed clone, a crashed runner). Each engine wraps the work's error its own way (Celery:
`InfrastructureError: <text>`, Prefect: `Flow run encountered an exception: InfrastructureError: <text>`), and
the text ends with what git or the runner printed. So the engine's text is never shown as the message: it is
classified here into a `Failure` whose `message` is a fixed sentence of `InfraMessage` (the contract's own text
where it names one, "Git clone of student repository failed.") and whose `details` keeps the rest, redacted.
The same failure on two engines then compares equal. The work (`backends.work`) raises with texts that start
with the phrases matched here; the gateway classifies what an engine reports (`describe_failure`).
Documented in `docs/vocabulary.md`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from common.redact import redact_text

# Details are for people reading one failure, not a log: the first part of git's or the runner's text is enough.
DETAILS_LIMIT = 1000


class InfraMessage(StrEnum):
    """Every message a broken run may carry in `result_json.message`. Add a member, never reword one."""

    STUDENT_CLONE_FAILED = "Git clone of student repository failed."
    REFERENCE_CLONE_FAILED = "Git clone of reference repository failed."
    STUDENT_COMMIT_NOT_FOUND = "Commit not found in the student repository."
    REFERENCE_COMMIT_NOT_FOUND = "Commit not found in the reference repository."
    CREDENTIAL_UNAVAILABLE = "Repository credential not available."
    GIT_MISSING = "Git is not installed on the worker."
    ASSIGNMENT_UNUSABLE = "The assignment in the reference repository is not usable."
    JOB_REFUSED = "The test job was refused before it ran."
    SANDBOX_UNUSABLE = "The worker's sandbox is not usable."
    RUNNER_CRASHED = "The test runner crashed."
    SUBMISSION_FAILED = "Recording the submission failed."
    DEADLINE_EXCEEDED = "The test run did not finish before its deadline."
    DEPLOYMENT_MISSING = "The execution backend's deployment does not exist."
    ENGINE_REFUSED = "The execution engine refused the job."
    WORKER_LOST = "The worker running the test job was lost."
    RESULT_UNREADABLE = "The test run's result could not be read."
    FAILED = "The test run failed on the worker."


# First match wins; each pattern is matched at the start of the work's text (engine wrappers removed).
_PATTERNS: list[tuple[re.Pattern[str], InfraMessage]] = [
    (re.compile(r"Git clone of student repository failed", re.I), InfraMessage.STUDENT_CLONE_FAILED),
    (re.compile(r"Git clone of reference repository failed", re.I), InfraMessage.REFERENCE_CLONE_FAILED),
    (re.compile(r"Commit \S+ not found in the student repository", re.I), InfraMessage.STUDENT_COMMIT_NOT_FOUND),
    (re.compile(r"Commit \S+ not found in the reference repository", re.I), InfraMessage.REFERENCE_COMMIT_NOT_FOUND),
    (re.compile(r"Credential for the \w+ repository not available", re.I), InfraMessage.CREDENTIAL_UNAVAILABLE),
    (re.compile(r"git is not installed", re.I), InfraMessage.GIT_MISSING),
    (
        re.compile(r"(meta\.yaml|assignment (directory|file)|the assignment has no test files)", re.I),
        InfraMessage.ASSIGNMENT_UNUSABLE,
    ),  # fmt: skip
    (
        re.compile(r"(refused |malformed |the test job has no reference|submission (has|needs) )", re.I),
        InfraMessage.JOB_REFUSED,
    ),  # fmt: skip
    (re.compile(r"(sandbox|no python)", re.I), InfraMessage.SANDBOX_UNUSABLE),
    (re.compile(r"test runner (crashed|could not start)", re.I), InfraMessage.RUNNER_CRASHED),
    (
        re.compile(
            r"(could not create the submissions repository|submissions repository not reachable|"
            r"push to the submissions repository failed)",
            re.I,
        ),
        InfraMessage.SUBMISSION_FAILED,
    ),  # fmt: skip
    (re.compile(r"The test run did not finish before its deadline", re.I), InfraMessage.DEADLINE_EXCEEDED),
    (re.compile(r"deployment not found", re.I), InfraMessage.DEPLOYMENT_MISSING),
]

# By exception type, when the text alone says nothing known.
_BY_TYPE: dict[str, InfraMessage] = {
    "BadJobError": InfraMessage.JOB_REFUSED,
    "DeadlineExceeded": InfraMessage.DEADLINE_EXCEEDED,
    "WorkerLostError": InfraMessage.WORKER_LOST,
    "ResultUnavailable": InfraMessage.RESULT_UNREADABLE,
    "EngineConfigurationError": InfraMessage.ENGINE_REFUSED,
    "DeploymentNotFound": InfraMessage.DEPLOYMENT_MISSING,
}

# Wrappers the engines put around the work's own text.
_PREFECT_WRAPPER = re.compile(r"^Flow run encountered an exception:\s*", re.I)
_TYPE_PREFIX = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(Error|Exception|Exceeded|Unavailable)):\s*")
# Exception types that only carry another's text (the Celery task's wrapper) or say nothing (a state name).
_WRAPPER_TYPES = {"TaskInfrastructureError", "Failed", "Crashed", "FAILED", "CRASHED", "Exception", "RuntimeError"}
GENERIC_TYPE = "InfrastructureError"


@dataclass(frozen=True)
class Failure:
    """One infrastructure failure, engine-independent: the work's exception type, the stable message, details."""

    exception: str
    message: InfraMessage
    details: str | None = None

    def as_result_json(self, engine: str) -> dict[str, Any]:
        """The legacy `result_json` of a broken run; `details` only when there are some."""
        answer: dict[str, Any] = {f"{engine}_exception": self.exception, "message": self.message.value}
        if self.details:
            answer["details"] = self.details
        return answer


def _unwrap(text: str) -> tuple[str | None, str]:
    """(innermost exception type named in the text, the text without the engine's wrappers)."""
    found: str | None = None
    text = _PREFECT_WRAPPER.sub("", text.strip())
    while match := _TYPE_PREFIX.match(text):
        found = match["type"].rsplit(".", 1)[-1]
        text = text[match.end() :]
        text = _PREFECT_WRAPPER.sub("", text)
    return found, text.strip()


def describe_failure(error_type: str | None, text: str | None, default: InfraMessage = InfraMessage.FAILED) -> Failure:
    """Classify what an engine reported about a broken run into the vocabulary (`default` when nothing matches)."""
    named, rest = _unwrap(text or "")
    exception = named or (error_type if error_type and error_type not in _WRAPPER_TYPES else None) or GENERIC_TYPE
    message = next((m for pattern, m in _PATTERNS if pattern.match(rest)), None)
    if message is None:
        message = _BY_TYPE.get(exception) or _BY_TYPE.get(error_type or "") or default
    details = redact_text(rest)[:DETAILS_LIMIT] or None
    if details is not None and details.rstrip(".").lower() == message.value.rstrip(".").lower():
        details = None  # the work's text was the message itself: nothing more to say
    return Failure(exception=exception, message=message, details=details)
