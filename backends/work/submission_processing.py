"""`run_submission_processing`: record a tested commit in the submissions repository, idempotently.

The submissions repository is `settings.submissions_repo_url`, or on the embedded default a bare repository at
`<data_dir>/submissions.git` (created on first use). A submission becomes the branch
`refs/heads/submissions/<member>/<assignment>` pointing at the tested commit (`<assignment>` is the assignment
path with `/` → `.`, the legacy dotted content path). Before pushing, the branch's current value is read with
`ls-remote`: if it already is that commit nothing is pushed and `changed` is false, so a retried or duplicated
task changes nothing the second time. A later submission of another commit moves the branch (`previous` says
from where). A password in the submissions URL (operator configuration) is handed to git through askpass.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from backends.secrets import Credential
from backends.work.checkout import checkout, git_session, last_line, plan_checkout, run_git
from backends.work.errors import BadJobError, InfrastructureError
from backends.work.gitsafe import validate_url
from backends.work.progress import ProgressCallback, ProgressEvent, no_progress
from common.legacy import TestJob
from common.redact import redact_url
from common.settings import Settings, get_settings

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class SubmissionJob(BaseModel):
    """The `submission` parameter of `submission_processing`.

    - `test_job`: the `TestJob` that was tested (its `module` is the student repository at the tested commit);
    - `result_id`: the legacy result row, recorded in the answer only;
    - `member`: the name used in the branch; default `test_job.course_member_id`, else `user_id`;
    - `assignment`: default the assignment path (`module.path`), else `course_content_id`.
    """

    model_config = ConfigDict(extra="allow")

    test_job: TestJob
    result_id: str | None = None
    member: str | None = None
    assignment: str | None = None


def _ref_part(value: str, what: str) -> str:
    cleaned = _UNSAFE.sub("-", value.replace("/", ".")).strip(".-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    if not cleaned or cleaned.endswith(".lock"):
        raise BadJobError(f"submission has no usable {what} for the branch name")
    return cleaned


def submission_ref(job: SubmissionJob) -> str:
    """The branch a submission is recorded on."""
    tj = job.test_job
    member = job.member or tj.course_member_id or tj.user_id
    assignment = job.assignment or tj.module.path or tj.course_content_id
    if not member or not assignment:
        raise BadJobError("submission needs a member (course_member_id/user_id) and an assignment (path)")
    return f"refs/heads/submissions/{_ref_part(member, 'member')}/{_ref_part(assignment, 'assignment')}"


def _target(settings: Settings) -> tuple[str, Credential | None]:
    """The submissions repository URL (password removed) and its credential, creating the embedded one."""
    if settings.submissions_repo_url is None:
        bare = settings.data_dir / "submissions.git"
        if not (bare / "HEAD").is_file():
            bare.mkdir(parents=True, exist_ok=True)
            with git_session(settings, None) as env:
                done = run_git(["init", "-q", "--bare", "--", str(bare)], bare.parent, env)
            if done.returncode != 0:
                raise InfrastructureError(f"could not create the submissions repository: {last_line(done.stderr)}")
        return str(bare), None
    raw = settings.submissions_repo_url
    safe = validate_url(raw, settings.allowed_git_schemes)
    cred = None
    if safe.had_password:
        parts = urlsplit(raw)
        cred = Credential(parts.username or None, parts.password or "")
    return safe.url, cred


def run_submission_processing(
    submission: SubmissionJob | dict[str, Any],
    progress: ProgressCallback = no_progress,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Record the tested commit on the submission branch; idempotent. Returns what it did:
    `{"ref", "commit", "changed", "previous", "repository" (redacted), "result_id"}`."""
    settings = settings or get_settings()
    try:
        job = submission if isinstance(submission, SubmissionJob) else SubmissionJob.model_validate(submission)
    except ValidationError as exc:
        raise BadJobError(f"malformed submission: {exc.error_count()} invalid field(s)") from None
    ref = submission_ref(job)
    plan = plan_checkout(job.test_job.module, "student", settings)
    if not job.test_job.module.commit:
        raise BadJobError("submission needs the tested commit (module.commit)")
    url, cred = _target(settings)
    progress(ProgressEvent(0, "started", {"ref": ref}))
    base = settings.sandbox_root.expanduser() if settings.sandbox_root else None
    work = Path(tempfile.mkdtemp(prefix="gateway-submission-", dir=base))
    try:
        fetched = checkout(plan, work / "student", settings, shallow=False)
        progress(ProgressEvent(40, "fetched", {"commit": fetched.commit}))
        with git_session(settings, cred) as env:
            seen = run_git(["ls-remote", "--", url, ref], fetched.root, env)
            if seen.returncode != 0:
                raise InfrastructureError(f"submissions repository not reachable: {last_line(seen.stderr)}")
            previous = seen.stdout.split()[0] if seen.stdout.strip() else None
            changed = previous != fetched.commit
            if changed:
                pushed = run_git(["push", "-q", "--no-verify", "--", url, f"+{fetched.commit}:{ref}"], fetched.root,
                                 env)  # fmt: skip
                if pushed.returncode != 0:
                    raise InfrastructureError(f"push to the submissions repository failed: {last_line(pushed.stderr)}")
        progress(ProgressEvent(90, "recorded", {"ref": ref, "changed": changed}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "ref": ref,
        "commit": fetched.commit,
        "changed": changed,
        "previous": previous,
        "repository": redact_url(url),
        "result_id": job.result_id,
    }
    progress(ProgressEvent(100, "done", {"ref": ref, "changed": changed}))
    return result
