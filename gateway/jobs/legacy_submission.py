"""The platform's own parameter set for a submission deployment the gateway did not write.

The legacy `submit-result` flow takes `submission, provider, full_path, token, assignment, module, user_id`; the
gateway's shipped flow takes `{"submission": {"test_job", "result_id"}}`. When an execution backend's
`properties.submission_deployment` names a custom deployment, the submission leg carries the legacy set built
here, so such a deployment runs unchanged (the engine adapter just sends the leg's params).

The legacy `token` was a decrypted git token; here it is the *name* of a credential (the module repository's
`credential`, resolved on the worker by `backends.secrets`) or null: secrets never travel in job parameters.
Every URL is sent without credentials. The mapping is documented in docs/legacy.md (Submission).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common.legacy import Repository, TestJob
from common.redact import strip_credentials
from gateway.store.models import Result

LEGACY_SUBMISSION_PARAMETERS = ("submission", "provider", "full_path", "token", "assignment", "module", "user_id")
# The row's keys a legacy submission flow needs to find and describe the result it submits.
_ROW_KEYS = (
    "id",
    "course_member_id",
    "course_content_id",
    "course_submission_group_id",
    "execution_backend_id",
    "test_system_id",
    "version_identifier",
    "status",
    "result",
)


def provider_and_full_path(url: str) -> tuple[str, str]:
    """`https://tok@git.example/group/alice.git` → (`https://git.example`, `group/alice`).

    The inverse of how the contract builds a module URL (`"<provider_url>/<project>.git"`); credentials are
    stripped first, so neither part ever holds one.
    """
    parts = urlsplit(strip_credentials(url))
    provider = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    full_path = parts.path.strip("/").removesuffix(".git")
    return provider, full_path


def _repository(repo: Repository | None) -> dict[str, Any] | None:
    """A repository as the legacy flow reads it, minus any secret: URL stripped, `token` null, `credential` kept."""
    if repo is None:
        return None
    legacy = repo.model_copy(update={"url": strip_credentials(repo.url), "token": None})
    return legacy.model_dump(mode="json", exclude={"credential_hosts"})  # the gateway's own, not the legacy set


def legacy_submission_params(test_job: dict[str, Any], row: Result) -> dict[str, Any]:
    """The legacy `submit-result` parameters for `row`, tested with `test_job` (the primary leg's parameters)."""
    job = TestJob.model_validate(test_job)
    provider, full_path = provider_and_full_path(job.module.url)
    submission = {key: getattr(row, key) for key in _ROW_KEYS}
    submission["result_id"] = row.id  # the same id under the gateway's own key, for flows that read that one
    return {
        "submission": submission,
        "provider": provider,
        "full_path": full_path,
        "token": job.module.credential,  # a credential NAME (or null), never a secret
        "assignment": _repository(job.reference),
        "module": _repository(job.module),
        "user_id": job.user_id,
    }
