"""Refused job input starts nothing, and secrets never reach the sandbox, git's command line or a log.

A spy `git` first on PATH records every invocation (its argv and environment) before running the real git: a
real process, not a mock, so "git never ran" and "git never saw the token" are observed, not assumed.
"""

from __future__ import annotations

import logging
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backends.secrets import SecretError, resolve_credential
from backends.work.errors import BadJobError
from backends.work.gitsafe import validate_commit, validate_url
from backends.work.student_testing import run_student_testing
from common.settings import Settings

TESTS = {"test_env.py": ("import os\n\ndef test_env():\n    assert False, 'ENV=' + repr(sorted(os.environ.items()))\n")}
TOKEN = "glpat-JOB-TOKEN-must-never-leak-4711"
WORKER_SECRET = "worker-process-secret-0815"


@pytest.fixture
def git_spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a recording `git` wrapper first on PATH; returns the directory its records land in."""
    real = shutil.which("git")
    assert real is not None
    records = tmp_path / "git-calls"
    records.mkdir()
    bindir = tmp_path / "spybin"
    bindir.mkdir()
    spy = bindir / "git"
    spy.write_text(
        f'#!/bin/sh\nrec="{records}/call.$$"\nprintf "%s\\n" "$@" > "$rec.argv"\nenv > "$rec.env"\nexec "{real}" "$@"\n'
    )
    spy.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bindir}:{Path(real).parent}:/usr/bin:/bin")
    return records


REFUSED_URLS = [
    "ext::sh -c touch% {canary}",
    "ext::sh -c 'touch {canary}'",
    "fd::17",
    "--upload-pack=touch {canary}",
    "-u touch {canary}",
    "ssh://-oProxyCommand=touch%20{canary}/repo.git",
    "ftp://example.invalid/repo.git",
    "git://example.invalid/repo.git",
    "https://example.invalid/repo.git\n--upload-pack=x",
]
REFUSED_COMMITS = ["--output={canary}", "-b", "HEAD~1", "main..evil", "@{{-1}}", "a b", "$(touch {canary})", "x;y"]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_refused_url_runs_nothing(make_job: Callable[..., Any], git_spy: Path, tmp_path: Path, url: str) -> None:
    canary = tmp_path / "canary"
    job = make_job(TESTS, {"x.py": ""})
    calls_before = sorted(git_spy.iterdir())  # making the job's repositories went through the spy too
    sandboxes = tmp_path / "sandboxes"
    settings = Settings(sandbox_root=sandboxes)
    job.module.url = url.format(canary=canary)
    with pytest.raises(BadJobError, match="refused"):
        run_student_testing(job, settings=settings)
    assert sorted(git_spy.iterdir()) == calls_before, "git was started for a refused URL"
    assert not canary.exists()
    assert not sandboxes.exists()


@pytest.mark.parametrize("commit", REFUSED_COMMITS)
def test_refused_commit_runs_nothing(make_job: Callable[..., Any], git_spy: Path, tmp_path: Path, commit: str) -> None:
    canary = tmp_path / "canary"
    job = make_job(TESTS, {"x.py": ""})
    job.reference.commit = commit.format(canary=canary)
    sandboxes = tmp_path / "sandboxes"
    before = sorted(git_spy.iterdir())
    with pytest.raises(BadJobError, match="refused"):
        run_student_testing(job, settings=Settings(sandbox_root=sandboxes))
    assert sorted(git_spy.iterdir()) == before
    assert not canary.exists() and not sandboxes.exists()


@pytest.mark.parametrize("path", ["../../etc", "/etc", "-rf", "a/../../b"])
def test_refused_path_runs_nothing(make_job: Callable[..., Any], git_spy: Path, path: str) -> None:
    job = make_job(TESTS, {"x.py": ""})
    job.module.path = path
    before = sorted(git_spy.iterdir())
    with pytest.raises(BadJobError, match="refused path"):
        run_student_testing(job)
    assert sorted(git_spy.iterdir()) == before


def test_allowed_scheme_setting_is_honoured(make_job: Callable[..., Any], git_spy: Path) -> None:
    job = make_job(TESTS, {"x.py": ""})
    before = sorted(git_spy.iterdir())
    with pytest.raises(BadJobError, match="'file' is not in allowed_git_schemes"):
        run_student_testing(job, settings=Settings(allowed_git_schemes=["https"]))
    assert sorted(git_spy.iterdir()) == before


def test_url_classification() -> None:
    allowed = ["https", "http", "ssh", "file", "local"]
    assert validate_url("https://host/x.git", allowed).kind == "https"
    assert validate_url("git@host:group/x.git", allowed).kind == "ssh"
    assert validate_url("/srv/repos/x.git", allowed).kind == "local"
    stripped = validate_url("https://user:pw@host/x.git", allowed)
    assert stripped.had_password and "pw" not in stripped.url
    assert validate_commit("ABCDEF1") == "abcdef1"
    assert validate_commit("release/2024.1") == "release/2024.1"


def test_job_token_never_reaches_sandbox_git_or_logs(
    make_job: Callable[..., Any], git_spy: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job = make_job(TESTS, {"x.py": ""}, token=TOKEN)
    job.reference.token = TOKEN
    before = set(git_spy.iterdir())
    monkeypatch.setenv("WORKER_ONLY_SECRET", WORKER_SECRET)  # in the worker's own environment from here on
    with caplog.at_level(logging.DEBUG):
        report = run_student_testing(job.model_dump())
    message = report["tests"][0]["tests"][0]["resultMessage"]
    assert "ENV=[" in message and "PYTEST_DISABLE_PLUGIN_AUTOLOAD" in message  # the dump really happened
    assert TOKEN not in message and WORKER_SECRET not in message and "WORKER_ONLY_SECRET" not in message
    calls = set(git_spy.iterdir()) - before
    assert calls, "git ran through the spy"
    for record in calls:
        assert TOKEN not in record.read_text()
        if record.suffix == ".env":
            assert WORKER_SECRET not in record.read_text()
    assert "ignoring a token given inside the job" in caplog.text
    assert TOKEN not in caplog.text


def test_credential_reaches_git_only_through_its_environment(
    make_job: Callable[..., Any], git_spy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "store-secret-value-42"
    monkeypatch.setenv("GATEWAY_SECRET_COURSE_REPO", f"deploy:{secret}")
    job = make_job(TESTS, {"x.py": ""}, credential="COURSE_REPO")
    for old in git_spy.iterdir():
        old.unlink()  # keep only the work's own git calls
    report = run_student_testing(job)
    assert secret not in report["tests"][0]["tests"][0]["resultMessage"]
    argv = [r.read_text() for r in git_spy.glob("*.argv")]
    envs = [r.read_text() for r in git_spy.glob("*.env")]
    assert argv and all(secret not in a for a in argv)
    # These repositories are paths on the worker: there is no host the credential is bound to, so git gets
    # nothing at all (test_credential_binding.py shows it reaching its bound host, and only that one).
    assert envs and all(secret not in e and "GIT_ASKPASS=" not in e for e in envs)


def test_secret_store_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> None:
    store = tmp_path / "secrets.yaml"
    store.write_text("course: {username: bot, password: s3cret}\nplain: tok123\n")
    settings = Settings(secrets_file=store)
    assert resolve_credential("course", settings).username == "bot"
    assert resolve_credential("plain", settings).password == "tok123"
    assert "s3cret" not in repr(resolve_credential("course", settings))
    monkeypatch.setenv("GATEWAY_SECRET_plain", "env-wins")
    assert resolve_credential("plain", settings).password == "env-wins"
    with pytest.raises(SecretError, match="no secret named"):
        resolve_credential("absent", settings)
    with pytest.raises(SecretError, match="must match"):
        resolve_credential("../etc/passwd", settings)
