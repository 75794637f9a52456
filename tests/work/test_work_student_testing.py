"""run_student_testing end to end: real git repositories, a real sandboxed pytest, the legacy report."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backends.examples import materialize_example
from backends.work.errors import InfrastructureError
from backends.work.progress import ProgressEvent
from backends.work.report import report_score
from backends.work.student_testing import run_student_testing

TESTS = {
    "test_calc.py": (
        "from calc import add, mean\n\n"
        "def test_add():\n    assert add(2, 3) == 5, 'add(2, 3) should be 5'\n\n"
        "def test_mean():\n    assert mean([1, 2]) == 1.5, 'mean of 1 and 2 is 1.5'\n"
    )
}
GOOD = {"calc.py": "def add(a, b):\n    return a + b\n\ndef mean(v):\n    return sum(v) / len(v)\n"}


def _tests(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{c['name']}::{t['name']}": t for c in report["tests"] for t in c["tests"]}


def test_passing_student_gets_full_score(make_job: Callable[..., Any]) -> None:
    report = run_student_testing(make_job(TESTS, GOOD))
    assert report["summary"] == {"total": 2, "passed": 2, "failed": 0, "skipped": 0}
    assert report["status"] == "COMPLETED" and report["result"] == "PASSED"
    assert report_score(report) == 1.0
    assert [c["name"] for c in report["tests"]] == ["test_calc.py"]
    assert set(_tests(report)) == {"test_calc.py::test_add", "test_calc.py::test_mean"}


def test_failing_student_gets_assertion_message(make_job: Callable[..., Any]) -> None:
    student = {"calc.py": GOOD["calc.py"].replace("sum(v) / len(v)", "sum(v) // len(v)")}
    report = run_student_testing(make_job(TESTS, student))
    assert report["summary"] == {"total": 2, "passed": 1, "failed": 1, "skipped": 0}
    assert report_score(report) == 0.5
    failed = _tests(report)["test_calc.py::test_mean"]
    assert failed["status"] == "COMPLETED" and failed["result"] == "FAILED"
    assert "mean of 1 and 2 is 1.5" in failed["resultMessage"]


def test_exception_and_skip_in_student_code(make_job: Callable[..., Any]) -> None:
    tests = {
        "test_more.py": (
            "import pytest\nfrom calc import add\n\n"
            "def test_raises():\n    add(None, 1)\n\n"
            "@pytest.mark.skip(reason='later')\ndef test_skipped():\n    pass\n"
        )
    }
    report = run_student_testing(make_job(tests, GOOD))
    assert report["summary"] == {"total": 2, "passed": 0, "failed": 1, "skipped": 1}
    assert "TypeError" in _tests(report)["test_more.py::test_raises"]["resultMessage"]
    assert _tests(report)["test_more.py::test_skipped"]["status"] == "SKIPPED"


def test_syntax_error_is_a_report_not_a_crash(make_job: Callable[..., Any]) -> None:
    report = run_student_testing(make_job(TESTS, {"calc.py": "def add(a, b) return a + b\n"}))
    assert report["summary"]["passed"] == 0 and report["summary"]["failed"] >= 1
    assert report_score(report) == 0.0
    messages = " ".join(t["resultMessage"] for t in _tests(report).values())
    assert "SyntaxError" in messages


def test_missing_student_directory_fails_the_tests(make_job: Callable[..., Any]) -> None:
    report = run_student_testing(make_job(TESTS, {}))
    assert report["summary"]["passed"] == 0 and report_score(report) == 0.0
    assert "calc" in " ".join(t["resultMessage"] for t in _tests(report).values())


def test_student_conftest_cannot_rewrite_the_verdict(make_job: Callable[..., Any]) -> None:
    cheat = (
        "import pytest\n\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
        "    outcome = yield\n    outcome.get_result().outcome = 'passed'\n"
    )
    student = {"calc.py": "def add(a, b):\n    return 0\n\ndef mean(v):\n    return 0\n", "conftest.py": cheat}
    report = run_student_testing(make_job(TESTS, student))
    assert report["summary"]["passed"] == 0


def test_progress_stages_in_order(make_job: Callable[..., Any]) -> None:
    events: list[ProgressEvent] = []
    run_student_testing(make_job(TESTS, GOOD), progress=events.append)
    stages = [e.stage for e in events]
    assert stages == ["started", "cloned", "collected", "running", "running", "done"]
    assert [e.percentage for e in events] == sorted(e.percentage for e in events)
    assert events[0].percentage == 0 and events[-1].percentage == 100
    assert events[2].metadata["total"] == 2
    assert events[4].metadata == {"done": 2, "total": 2, "test": "test_calc.py::test_mean"}


def test_meta_yaml_extra_test_files_and_support_files(make_job: Callable[..., Any]) -> None:
    tests = {
        **TESTS,
        "checks.py": "from calc import add\n\ndef test_data():\n    assert open('data.txt').read() == 'x'\n",
        "data.txt": "x",
        "meta.yaml": "properties:\n  testFiles: [checks.py]\n  additionalFiles: [data.txt]\n  executionTimeLimit: 20\n",
    }
    report = run_student_testing(make_job(tests, GOOD))
    assert report["summary"]["total"] == 3 and report["summary"]["passed"] == 3
    assert report["properties"]["timeLimit"] == 20


def test_missing_commit_is_an_infrastructure_error(make_job: Callable[..., Any]) -> None:
    job = make_job(TESTS, GOOD)
    job.module.commit = "0" * 40
    with pytest.raises(InfrastructureError, match="not found in the student repository") as info:
        run_student_testing(job)
    assert info.value.kind == "infrastructure"


def test_unreachable_repository_is_an_infrastructure_error(make_job: Callable[..., Any], tmp_path: Any) -> None:
    job = make_job(TESTS, GOOD)
    job.module.url = (tmp_path / "nowhere").as_uri()
    with pytest.raises(InfrastructureError, match="Git clone of student repository failed"):
        run_student_testing(job)


def test_missing_assignment_directory_in_reference(make_job: Callable[..., Any]) -> None:
    job = make_job(TESTS, GOOD)
    job.module.path = job.reference.path = "week9/none"
    with pytest.raises(InfrastructureError, match="not found in the reference"):
        run_student_testing(job)


def test_example_is_deterministic_and_scores(tmp_path: Any, isolated_env: Any) -> None:
    first = materialize_example(tmp_path / "a")
    again = materialize_example(tmp_path / "a")
    elsewhere = materialize_example(tmp_path / "b")
    assert first == again
    assert (first.passing_commit, first.failing_commit, first.reference_commit) == (
        elsewhere.passing_commit, elsewhere.failing_commit, elsewhere.reference_commit)  # fmt: skip
    assert report_score(run_student_testing(first.test_job("passing"))) == 1.0
    failing = run_student_testing(first.test_job("failing"))
    assert failing["summary"] == {"total": 3, "passed": 2, "failed": 1, "skipped": 0}


def test_sandbox_leaves_no_directories(make_job: Callable[..., Any], settings_for: Any) -> None:
    # Under the system temp dir (pytest's tmp_path is private to root; the sandbox user must enter this one).
    root = Path(tempfile.mkdtemp(prefix="gw-test-sandboxes-"))
    try:
        os.chmod(root, 0o755)
        report = run_student_testing(make_job(TESTS, GOOD), settings=settings_for(sandbox_root=root))
        assert report["summary"]["passed"] == 2
        # What stays is per worker, not per run: the pytest runtime, the uid locks and the admission slots.
        left = sorted(p.name for p in root.iterdir())
        assert [
            n for n in left if not n.startswith(("gateway-runtime-", ".gateway-sandbox-uids", ".gateway-sandbox-slots"))
        ] == []
    finally:
        shutil.rmtree(root, ignore_errors=True)
