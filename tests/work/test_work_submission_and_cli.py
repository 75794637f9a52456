"""Submission processing (idempotent) and the `gateway run-tests` / `gateway example` commands."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from backends.examples import materialize_example
from backends.work.errors import BadJobError
from backends.work.submission_processing import SubmissionJob, run_submission_processing
from common.settings import Settings
from gateway.cli import app

TESTS = {"test_a.py": "from a import one\n\ndef test_one():\n    assert one() == 1\n"}


def _branch(bare: Path, ref: str) -> str:
    done = subprocess.run(["git", "--git-dir", str(bare), "rev-parse", ref], capture_output=True, text=True)
    return done.stdout.strip()


def test_submission_twice_changes_nothing_the_second_time(make_job: Callable[..., Any], isolated_env: Path) -> None:
    job = make_job(TESTS, {"a.py": "def one():\n    return 1\n"})
    events: list[Any] = []
    first = run_submission_processing({"test_job": job.model_dump(), "result_id": "r1"}, progress=events.append)
    assert first["changed"] is True and first["previous"] is None
    assert first["ref"] == "refs/heads/submissions/member-1/week1.ex1"
    assert first["commit"] == job.module.commit and first["result_id"] == "r1"
    bare = isolated_env / "submissions.git"
    assert _branch(bare, first["ref"]) == job.module.commit
    assert [e.stage for e in events][0] == "started" and events[-1].percentage == 100

    second = run_submission_processing(SubmissionJob(test_job=job, result_id="r1"))
    assert second["changed"] is False and second["previous"] == job.module.commit
    assert _branch(bare, first["ref"]) == job.module.commit


def test_a_new_commit_moves_the_branch(make_job: Callable[..., Any], isolated_env: Path, tmp_path: Path) -> None:
    target = tmp_path / "configured.git"
    subprocess.run(["git", "init", "-q", "--bare", str(target)], check=True)
    settings = Settings(submissions_repo_url=target.as_uri())
    job = make_job(TESTS, {"a.py": "def one():\n    return 1\n"})
    old = job.module.commit
    run_submission_processing({"test_job": job.model_dump()}, settings=settings)
    repo_dir = Path(job.module.url.removeprefix("file://"))
    subprocess.run(["git", "-C", str(repo_dir), "-c", "user.name=s", "-c", "user.email=s@x", "commit", "-q",
                    "--allow-empty", "-m", "again"], check=True)  # fmt: skip
    job.module.commit = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True,
                                       text=True, check=True).stdout.strip()  # fmt: skip
    moved = run_submission_processing({"test_job": job.model_dump()}, settings=settings)
    assert moved["changed"] is True and moved["previous"] == old
    assert _branch(target, moved["ref"]) == job.module.commit


def test_submission_refuses_bad_input(make_job: Callable[..., Any]) -> None:
    job = make_job(TESTS, {"a.py": ""})
    job.module.commit = "--force"
    with pytest.raises(BadJobError):
        run_submission_processing({"test_job": job.model_dump()})
    with pytest.raises(BadJobError, match="malformed submission"):
        run_submission_processing({"nothing": 1})


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return materialize_example(tmp_path_factory.mktemp("example"))


def test_cli_run_tests_prints_the_report(example: Any, isolated_env: Path) -> None:
    args = ["run-tests", "--module", f"{example.failing_url}@{example.failing_commit}",
            "--reference", f"{example.reference_url}@{example.reference_commit}", "--path", example.path]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["summary"] == {"total": 3, "passed": 2, "failed": 1, "skipped": 0}


def test_cli_exit_codes_for_bad_input_and_infrastructure(example: Any, isolated_env: Path) -> None:
    ref = f"{example.reference_url}@{example.reference_commit}"
    bad = CliRunner().invoke(app, ["run-tests", "--module", "ext::sh -c id@abc1234", "--reference", ref,
                                   "--path", example.path])  # fmt: skip
    assert bad.exit_code == 2 and "refused repository URL" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stdout == ""
    missing = CliRunner().invoke(app, ["run-tests", "--module", f"{example.passing_url}@{'1' * 40}",
                                       "--reference", ref, "--path", example.path])  # fmt: skip
    assert missing.exit_code == 1 and "not found in the student repository" in missing.stderr
    malformed = CliRunner().invoke(app, ["run-tests", "--module", "no-commit-here", "--reference", ref,
                                         "--path", example.path])  # fmt: skip
    assert malformed.exit_code == 2 and "URL@COMMIT" in malformed.stderr


def test_cli_example_runs_both_students(tmp_path: Path, isolated_env: Path) -> None:
    result = CliRunner().invoke(app, ["example", "--dest", str(tmp_path / "ex")])
    assert result.exit_code == 0, result.output
    assert "passing  3/3 passed" in result.stdout and "failing  2/3 passed" in result.stdout
    assert "FAILED test_calc.py::test_mean" in result.stdout


def test_a_submission_racing_another_on_its_ref_retries_and_both_are_recorded(
    make_job: Callable[..., Any], tmp_path: Path
) -> None:
    """25.5: another submission of the same member and assignment holds the ref's lock (git's own `<ref>.lock`,
    left by the submissions repository's hook on the first push, gone by the second): the push fails with
    "cannot lock ref", is retried, and succeeds; a second commit then moves the branch, and each submitted commit
    keeps its record ref."""
    target = tmp_path / "configured.git"
    subprocess.run(["git", "init", "-q", "--bare", str(target)], check=True)
    ref_dir = target / "refs" / "heads" / "submissions" / "member-1"
    hook = target / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e '{tmp_path}/held-once' ]; then touch '{tmp_path}/held-once'; mkdir -p '{ref_dir}';"
        f" touch '{ref_dir}/week1.ex1.lock'; else rm -f '{ref_dir}/week1.ex1.lock'; fi\n"
    )
    hook.chmod(0o755)
    settings = Settings(submissions_repo_url=target.as_uri())
    job = make_job(TESTS, {"a.py": "def one():\n    return 1\n"})
    first = run_submission_processing({"test_job": job.model_dump(), "result_id": "r1"}, settings=settings)
    assert (tmp_path / "held-once").exists()  # the first push met the held lock
    assert first["changed"] is True and _branch(target, first["ref"]) == job.module.commit
    repo_dir = Path(job.module.url.removeprefix("file://"))
    subprocess.run(["git", "-C", str(repo_dir), "-c", "user.name=s", "-c", "user.email=s@x", "commit", "-q",
                    "--allow-empty", "-m", "again"], check=True)  # fmt: skip
    older = job.module.commit
    job.module.commit = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True,
                                       text=True, check=True).stdout.strip()  # fmt: skip
    second = run_submission_processing({"test_job": job.model_dump(), "result_id": "r2"}, settings=settings)
    assert second["previous"] == older and _branch(target, second["ref"]) == job.module.commit
    for commit in (older, job.module.commit):
        assert _branch(target, f"refs/submissions/member-1/week1.ex1/{commit}") == commit
