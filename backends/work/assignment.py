"""What an assignment is on disk, and how its sandbox directory is assembled.

The reference (assignment) directory holds pytest files `test_*.py` and an optional `meta.yaml`, read in the
legacy platform's spelling, top-level or under `properties:`:

    properties:
      executionTimeLimit: 10          # wall-clock seconds for the whole run (default: settings)
      testFiles: [checks.py]          # test files beyond test_*.py
      additionalFiles: [data.csv]     # reference files the tests need (copied, never taken from the student)
      studentSubmissionFiles: [solution.py]   # if given, only these student files are copied

The sandbox gets a copy of the student's assignment directory, minus anything that could change how pytest
runs (conftest.py, pytest.ini, ...), then the reference's tests and extra files on top, so a student can never
replace a test. Symlinks are never followed or copied: a link could point anywhere on the worker.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from backends.work.errors import InfrastructureError

# Files that configure pytest itself: from the student they would let a submission rewrite its own verdict.
_PYTEST_CONFIG = {"conftest.py", "pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini", "sitecustomize.py",
                  "usercustomize.py"}  # fmt: skip
_SKIP_DIRS = {".git", "__pycache__", ".pytest_cache"}


@dataclass(frozen=True)
class Assignment:
    """The parsed reference directory: which files are tests, which are support, the time limit."""

    test_files: list[str]
    additional_files: list[str] = field(default_factory=list)
    student_files: list[str] | None = None
    time_limit: float | None = None


def _relative_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InfrastructureError(f"meta.yaml: {key} must be a list of file names")
    for item in value:
        pure = PurePosixPath(item)
        if pure.is_absolute() or ".." in pure.parts or item.startswith("-"):
            raise InfrastructureError(f"meta.yaml: {key} entry {item!r} must be a relative path inside the assignment")
    return list(value)


def read_assignment(reference_dir: Path) -> Assignment:
    """Parse the reference directory; an unusable one is the course's fault, so `InfrastructureError`."""
    if not reference_dir.is_dir() or reference_dir.is_symlink():
        raise InfrastructureError(f"assignment directory {reference_dir.name!r} not found in the reference repository")
    meta: dict[str, Any] = {}
    meta_path = reference_dir / "meta.yaml"
    if meta_path.is_file():
        try:
            loaded = yaml.safe_load(meta_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InfrastructureError(f"meta.yaml is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise InfrastructureError("meta.yaml must be a map")
        meta = {**loaded, **(loaded.get("properties") or {})}
    extra_tests = _relative_list(meta.get("testFiles"), "testFiles")
    tests = sorted(p.name for p in reference_dir.glob("test_*.py") if p.is_file() and not p.is_symlink())
    tests += [t for t in extra_tests if t not in tests and t.endswith(".py")]
    if not tests:
        raise InfrastructureError("the assignment has no test files (test_*.py or meta.yaml testFiles)")
    limit = meta.get("executionTimeLimit", meta.get("timeout"))
    if limit is not None and (not isinstance(limit, int | float) or limit <= 0):
        raise InfrastructureError("meta.yaml: executionTimeLimit must be a positive number of seconds")
    support = _relative_list(meta.get("additionalFiles"), "additionalFiles")
    support += [t for t in extra_tests if t not in tests]  # non-Python test data named as test files
    student = meta.get("studentSubmissionFiles")
    return Assignment(
        test_files=tests,
        additional_files=support,
        student_files=_relative_list(student, "studentSubmissionFiles") if student is not None else None,
        time_limit=float(limit) if limit is not None else None,
    )


def _copy_file(src: Path, dst: Path) -> None:
    if src.is_symlink() or not src.is_file():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst, follow_symlinks=False)


def _copy_tree(src: Path, dst: Path) -> None:
    for entry in src.iterdir():
        if entry.is_symlink() or entry.name in _SKIP_DIRS:
            continue
        if entry.is_dir():
            _copy_tree(entry, dst / entry.name)
        elif entry.is_file() and entry.name not in _PYTEST_CONFIG:
            _copy_file(entry, dst / entry.name)


def assemble(work: Path, student_dir: Path, reference_dir: Path, assignment: Assignment) -> list[str]:
    """Fill the sandbox's work dir: the student's files, then the reference's tests and support files on top.

    Returns the reference's files in it (relative paths): the sandbox makes them read-only to the run."""
    if student_dir.is_dir() and not student_dir.is_symlink():
        if assignment.student_files is None:
            _copy_tree(student_dir, work)
        else:
            for rel in assignment.student_files:
                _copy_file(student_dir / rel, work / rel)
    protected = list(dict.fromkeys([*assignment.test_files, *assignment.additional_files]))
    for rel in protected:
        src = reference_dir / rel
        if not src.is_file() or src.is_symlink():
            raise InfrastructureError(f"assignment file {rel!r} named in meta.yaml is missing from the reference")
        _copy_file(src, work / rel)
    conftest = reference_dir / "conftest.py"
    if conftest.is_file() and not conftest.is_symlink():
        _copy_file(conftest, work / "conftest.py")
        protected.append("conftest.py")
    return protected
