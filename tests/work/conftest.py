"""Fixtures for the work's tests: assignments as real git repositories, settings with chosen limits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from common.legacy import Repository, TestJob
from common.settings import Settings

Make = Callable[..., TestJob]


@pytest.fixture
def make_job(git_repo: Callable[..., Any], isolated_env: Path) -> Make:
    """Build a reference repo holding `tests` and a student repo holding `student`, both under `path`."""

    def build(tests: dict[str, str], student: dict[str, str], path: str = "week1/ex1", **module: object) -> TestJob:
        ref = git_repo(files={f"{path}/{k}": v for k, v in tests.items()})
        stu = git_repo(files={f"{path}/{k}": v for k, v in student.items()} or {"README.md": "empty\n"})
        ref_commit = ref.commit({"README.md": "reference\n"})
        stu_commit = stu.commit({"NOTES.md": "student\n"})
        return TestJob(
            user_id="u1",
            course_member_id="member-1",
            module=Repository(url=stu.url, path=path, commit=stu_commit, **module),  # type: ignore[arg-type]
            reference=Repository(url=ref.url, path=path, commit=ref_commit),
        )

    return build


@pytest.fixture
def settings_for(isolated_env: Path) -> Callable[..., Settings]:
    """Settings from the isolated environment with some fields overridden."""

    def build(**overrides: object) -> Settings:
        return Settings(**overrides)  # type: ignore[arg-type]

    return build


def processes_of_uid(uid: int) -> list[int]:
    """Live processes owned by `uid` (to prove a sandbox left nothing behind)."""
    return [
        p.pid
        for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"] is not None and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE
    ]
