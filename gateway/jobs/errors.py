"""Domain errors of the job services, each carrying the legacy contract's status code and text.

The services know no HTTP; the API maps a `JobError` to `{"detail": message}` with its status code (one
exception handler in `gateway.api.app`), so the answers stay exactly the legacy ones.
"""

from __future__ import annotations


class JobError(Exception):
    """A request the contract answers with an error; `status_code` is the legacy one."""

    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadJobRequest(JobError):
    status_code = 400


class NotAllowed(JobError):
    status_code = 403

    def __init__(self, detail: str = "Not allowed") -> None:
        super().__init__(detail)


class NotFound(JobError):
    status_code = 404


class WorkerUnavailable(NotFound):
    """The legacy answer when a Prefect deployment does not exist (a 404, with the contract's text)."""

    def __init__(self, deployment: str) -> None:
        super().__init__(f"Worker [{deployment}] is currently not available. Please wait a moment!")


class Conflict(JobError):
    status_code = 409


class EngineUnreachable(JobError):
    """An engine call the client waits for (a cancel) could not be made."""

    status_code = 503
