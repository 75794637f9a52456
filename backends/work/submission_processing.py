"""`run_submission_processing`: record a tested commit in the submissions repository, idempotently.

The submissions repository is `settings.submissions_repo_url`, or on the embedded default a bare repository at
`<data_dir>/submissions.git` (created on first use). A submission becomes the branch
`refs/heads/submissions/<member>/<assignment>` pointing at the tested commit (`<assignment>` is the assignment
path with `/` → `.`, the legacy dotted content path). Before pushing, the branch's current value is read with
`ls-remote`: if it already is that commit nothing is pushed and `changed` is false, so a retried or duplicated
task changes nothing the second time. A later submission of another commit moves the branch (`previous` says
from where); every submitted commit also keeps its own record ref (`refs/submissions/<member>/<assignment>/<commit>`).
Two submissions of the same ref at once: the loser of the race retries on the lock or lease failure (`_record`).
A password in the submissions URL (operator configuration) is handed to git through askpass.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

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


class RefBusy(InfrastructureError):
    """Another submission of the same member and assignment updated (or held the lock of) the ref meanwhile."""


# What git says when another writer holds or moved the ref (a local lock file, a remote's refused lock, a lease).
_BUSY = ("cannot lock ref", "failed to lock", "unable to create", ".lock': file exists", "stale info", "fetch first")
# Tries of one submission against concurrent ones on its ref (each re-reads the ref first).
REF_ATTEMPTS = 6


def submission_record_ref(ref: str, commit: str) -> str:
    """The append-only record of one submitted commit beside the branch (`refs/submissions/<member>/<assignment>/
    <commit>`): every submission is kept even when a concurrent one of the same ref moved the branch past it."""
    return f"refs/submissions/{ref.removeprefix('refs/heads/submissions/')}/{commit}"


@retry(
    retry=retry_if_exception_type(RefBusy),
    stop=stop_after_attempt(REF_ATTEMPTS),
    wait=wait_exponential(multiplier=0.05, max=1.0),
    reraise=True,
)
def _record(url: str, ref: str, commit: str, root: Path, env: dict[str, str]) -> tuple[str | None, bool]:
    """Point `ref` at `commit` (and keep the commit's record ref) unless it is there already; returns the ref's
    previous commit and whether it changed.

    Two submissions of the same member and assignment (a concurrent push of the same ref) race for the ref: the
    push is leased on the value just read (`--force-with-lease`) and atomic, so the loser of a race sees a lock or
    lease failure, reads the ref again and pushes again (`RefBusy`, retried): both are recorded, none is lost.
    """
    seen = run_git(["ls-remote", "--", url, ref], root, env)
    if seen.returncode != 0:
        raise InfrastructureError(f"submissions repository not reachable: {last_line(seen.stderr)}")
    previous = seen.stdout.split()[0] if seen.stdout.strip() else None
    if previous == commit:
        return previous, False
    lease = f"--force-with-lease={ref}:{previous or ''}"
    refspecs = [f"+{commit}:{ref}", f"{commit}:{submission_record_ref(ref, commit)}"]
    pushed = run_git(["push", "-q", "--atomic", "--no-verify", lease, "--", url, *refspecs], root, env)
    if pushed.returncode != 0:
        message = last_line(pushed.stderr)
        if any(sign in pushed.stderr.lower() for sign in _BUSY):
            raise RefBusy(f"the submission branch was busy: {message}")
        raise InfrastructureError(f"push to the submissions repository failed: {message}")
    return previous, True


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
            previous, changed = _record(url, ref, fetched.commit, fetched.root, env)
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
