"""The bundled example assignment, turned into real git repositories for the CLI, the docs and the tests.

`data/reference` is a tiny assignments repository (`week1/ex1`: three tests on `calc.py`); `data/passing` and
`data/failing` are two student repositories, the second failing `test_mean`. Commits use a fixed author and
fixed dates, so their SHAs are the same on every machine and a second `materialize_example` reuses them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.legacy import Repository, TestJob

DATA = Path(__file__).parent / "data"
EXAMPLE_PATH = "week1/ex1"
_FIXED_DATE = "2024-01-01T12:00:00+00:00"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Example Course",
    "GIT_AUTHOR_EMAIL": "course@example.invalid",
    "GIT_COMMITTER_NAME": "Example Course",
    "GIT_COMMITTER_EMAIL": "course@example.invalid",
    "GIT_AUTHOR_DATE": _FIXED_DATE,
    "GIT_COMMITTER_DATE": _FIXED_DATE,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


@dataclass(frozen=True)
class ExampleRepos:
    """Where the example repositories are and which commits to test."""

    reference_url: str
    reference_commit: str
    passing_url: str
    passing_commit: str
    failing_url: str
    failing_commit: str
    path: str = EXAMPLE_PATH

    def test_job(self, student: Literal["passing", "failing"] = "passing", user_id: str = "demo") -> TestJob:
        """A legacy `TestJob` for one of the two student solutions."""
        url, commit = (self.passing_url, self.passing_commit) if student == "passing" else (
            self.failing_url, self.failing_commit)  # fmt: skip
        return TestJob(
            user_id=user_id,
            course_member_id=f"member-{user_id}",
            course_content_id="example-week1-ex1",
            module=Repository(url=url, path=self.path, commit=commit),
            reference=Repository(url=self.reference_url, path=self.path, commit=self.reference_commit),
        )


def _git(args: list[str], cwd: Path) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), **_GIT_ENV}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _copy_tree(src: Path, dst: Path) -> None:
    for entry in sorted(src.rglob("*")):
        if entry.is_file() and "__pycache__" not in entry.parts:
            target = dst / entry.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(entry.read_bytes())


def _repo(dest: Path, name: str) -> tuple[str, str]:
    """Create the repository `name` under `dest` from `data/name`, or reuse it; returns (file URL, commit)."""
    path = dest / name
    if (path / ".git").is_dir():
        try:
            return path.resolve().as_uri(), _git(["rev-parse", "HEAD"], path)
        except subprocess.CalledProcessError:
            pass  # an empty or broken repository: make it again below
    path.mkdir(parents=True, exist_ok=True)
    _git(["init", "-q", "-b", "main"], path)
    _copy_tree(DATA / name, path)
    _git(["add", "-A"], path)
    _git(["commit", "-q", "--no-gpg-sign", "-m", f"example: {name}"], path)
    return path.resolve().as_uri(), _git(["rev-parse", "HEAD"], path)


def materialize_example(dest: Path) -> ExampleRepos:
    """Create (or reuse, idempotently) the example's reference and two student repositories under `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    ref_url, ref_commit = _repo(dest, "reference")
    ok_url, ok_commit = _repo(dest, "passing")
    bad_url, bad_commit = _repo(dest, "failing")
    return ExampleRepos(ref_url, ref_commit, ok_url, ok_commit, bad_url, bad_commit)
