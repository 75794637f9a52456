"""What the platform sent its own submission deployment, for a deployment the gateway did not write.

The platform's `submit-result` flow takes ONE parameter, `submission`: its `Submission` model as the platform's
API dumped it (`parameters={"submission": Submission.model_dump(exclude_none=True)}`):
`submission` (the repository the merge request goes to, a `Repository`), `provider`, `full_path` (that
repository's path at the provider), `token`, `assignment` (the course content, a `CourseContentGet`), `module`
(the student's repository at the tested commit), `result_id`, `user_id`. When an execution backend's
`properties.submission_deployment` names such a deployment, the submission leg carries this set (built here), so
the flow runs unchanged; the shipped flow and the Celery task keep the gateway's `{"submission": {"test_job",
"result_id"}}`.

**fix**: the platform's `token` (and each `Repository.token`) was a decrypted git token, stored in Prefect's
database. Here `token` is the *name* of a credential (the module repository's `credential`, resolved on the
worker by `backends.secrets`; "" when the member has none, the model requires a string), every repository keeps
its `credential` name and no `token`, and every URL is sent without credentials. The gateway has no separate
submission repository: the merge request goes to the member's repository (`submission` = the module's URL).
The mapping is documented in docs/legacy.md (Submission).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common.legacy import DEFAULT_CONTENT_TYPE, Repository, TestJob
from common.redact import strip_credentials
from gateway.store.models import Result

# The keys of the platform's `Submission` model (every one required there).
LEGACY_SUBMISSION_KEYS = (
    "submission", "provider", "full_path", "token", "assignment", "module", "result_id", "user_id",
)  # fmt: skip


def provider_and_full_path(url: str) -> tuple[str, str]:
    """`https://tok@git.example/group/alice.git` → (`https://git.example`, `group/alice`).

    The inverse of how the contract builds a module URL (`"<provider_url>/<project>.git"`); credentials are
    stripped first, so neither part ever holds one.
    """
    parts = urlsplit(strip_credentials(url))
    provider = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    full_path = parts.path.strip("/").removesuffix(".git")
    return provider, full_path


def _repository(repo: Repository) -> dict[str, Any]:
    """A repository as the platform dumped it (`exclude_none`), minus any secret: URL stripped, no `token`, the
    `credential` name kept (an extra key the platform's model ignores; the worker resolves it). The gateway's own
    `credential_hosts` binding stays out: it is not part of the platform's set."""
    plain = repo.model_copy(update={"url": strip_credentials(repo.url), "token": None})
    return plain.model_dump(mode="json", exclude_none=True, exclude={"credential_hosts"})


def assignment_of(content: Any) -> dict[str, Any]:
    """The course content as the primary leg's spec carries it (`spec["assignment"]`, written at submit): what
    the platform's `CourseContentGet` needs and the gateway knows. No secrets: the reference URL stays out."""
    return {
        "id": content.id,
        "path": content.path,
        "directory": content.directory,
        "course_content_type_id": content.course_content_type_id or DEFAULT_CONTENT_TYPE,
        "reference_commit": content.reference_commit,
        "max_submissions": content.max_submissions,
        "execution_backend_id": content.execution_backend_id,
    }


def _course_content_get(job: TestJob, assignment: dict[str, Any] | None) -> dict[str, Any]:
    """The platform's `CourseContentGet` of the tested content: the fields its model requires, and the
    `properties.gitlab.directory` its flow copies from. The gateway keeps no courses (`course_id` is "") and no
    positions (0); `version_identifier` is the released reference commit the run was tested against."""
    known = assignment or {}
    directory = known.get("directory") or job.module.path or ""
    dumped = {
        "id": known.get("id") or job.course_content_id or "",
        "path": known.get("path") or directory.replace("/", "."),
        "course_id": "",
        "course_content_type_id": known.get("course_content_type_id") or DEFAULT_CONTENT_TYPE,
        "course_content_kind_id": "assignment",
        "properties": {"gitlab": {"directory": directory}},
        "version_identifier": known.get("reference_commit") or (job.reference.commit if job.reference else "") or "",
        "position": 0.0,
        "max_submissions": known.get("max_submissions"),
        "execution_backend_id": known.get("execution_backend_id") or job.execution_backend_id,
    }
    return {key: value for key, value in dumped.items() if value is not None}


def legacy_submission_params(
    test_job: dict[str, Any], row: Result, assignment: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The platform's `submit-result` parameters for `row`, tested with `test_job` (the primary leg's
    parameters); `assignment`: the content as the primary leg's spec carries it (older legs: derived)."""
    job = TestJob.model_validate(test_job)
    provider, full_path = provider_and_full_path(job.module.url)
    submission_repository = Repository(url=job.module.url, credential=job.module.credential)
    submission = {
        "submission": _repository(submission_repository),
        "provider": provider,
        "full_path": full_path,
        "token": job.module.credential or "",  # a credential NAME ("" for none), never a secret
        "assignment": _course_content_get(job, assignment),
        "module": _repository(job.module),
        "result_id": row.id,
        "user_id": job.user_id or "",
    }
    return {"submission": submission}
