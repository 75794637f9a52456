"""`run_student_testing`: one test run from job to report, the same code under Celery and Prefect.

Steps: validate the job (nothing runs for a refused one) → fetch student and reference at their commits →
assemble the sandbox → run pytest under limits while tailing its progress → build the report whole.
A student's failure of any kind is a report; the worker's failure is `InfrastructureError`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from backends.work.assignment import assemble, read_assignment
from backends.work.checkout import checkout, plan_checkout
from backends.work.environment import effective_environment
from backends.work.errors import BadJobError, InfrastructureError
from backends.work.progress import ProgressCallback, ProgressEvent, no_progress
from backends.work.report import build_report
from backends.work.sandbox import Limits, make_run_dir, remove_run_dir, run_pytest, sandbox_runtime
from backends.work.verdict import decide
from common.legacy import TestJob
from common.redact import redact_text
from common.settings import Settings, get_settings

log = logging.getLogger(__name__)


def parse_test_job(test_job: TestJob | dict[str, Any]) -> TestJob:
    """Accept the model or its dict (what an engine delivers); a malformed job is refused."""
    if isinstance(test_job, TestJob):
        return test_job
    try:
        return TestJob.model_validate(test_job)
    except ValidationError as exc:
        raise BadJobError(f"malformed test job: {exc.error_count()} invalid field(s)") from None


class _Progress:
    """Maps pytest events to the 30..95 band and forwards to the engine's callback; never lets it break a run."""

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback
        self.total = 0
        self.done = 0

    def emit(self, percentage: int, stage: str, **metadata: Any) -> None:
        try:
            self.callback(ProgressEvent(percentage, stage, metadata))
        except Exception:  # noqa: BLE001 - a broken progress channel must not fail the student's run
            log.exception("progress callback failed at stage %s", stage)

    def on_events(self, events: list[dict[str, object]]) -> None:
        for event in events:
            if event.get("event") == "collected":
                nodeids = event.get("nodeids")
                self.total = len(nodeids) if isinstance(nodeids, list) else 0
                self.emit(30, "collected", total=self.total)
            elif event.get("event") == "test" and self.total and (event.get("when") == "call" or (
                    event.get("when") == "setup" and event.get("outcome") != "passed")):  # fmt: skip
                self.done += 1
                pct = 30 + int(65 * self.done / self.total)
                self.emit(min(pct, 95), "running", done=self.done, total=self.total, test=str(event.get("nodeid")))


def run_student_testing(
    test_job: TestJob | dict[str, Any],
    progress: ProgressCallback = no_progress,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Clone module+reference at their commits, run the assignment's tests in the sandbox, return the report.

    Student failures (failing asserts, exceptions, syntax errors, timeouts of student code) are a report.
    Infrastructure failures raise `InfrastructureError` (`BadJobError` for refused input), secret-free.
    """
    settings = settings or get_settings()
    job = parse_test_job(test_job)
    if job.reference is None:
        raise BadJobError("the test job has no reference (assignment) repository")
    # Validate both repositories before anything runs: a refused job starts no process and makes no directory.
    student_plan = plan_checkout(job.module, "student", settings)
    reference_plan = plan_checkout(job.reference, "reference", settings)
    runtime = sandbox_runtime(settings)  # refuses to grade when the sandbox cannot isolate (checked once per worker)
    reporter = _Progress(progress)
    reporter.emit(0, "started")
    timings: dict[str, float] = {}
    base = settings.sandbox_root.expanduser() if settings.sandbox_root else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    clones = Path(tempfile.mkdtemp(prefix="gateway-checkout-", dir=base))
    run_dir = None
    try:
        t0 = time.monotonic()
        student = checkout(student_plan, clones / "student", settings)
        reference = checkout(reference_plan, clones / "reference", settings)
        timings["clone"] = time.monotonic() - t0
        reporter.emit(20, "cloned", student_commit=student.commit, reference_commit=reference.commit)

        t0 = time.monotonic()
        assignment = read_assignment(reference.assignment_dir)
        run_dir = make_run_dir(settings)
        protected = assemble(run_dir.work, student.assignment_dir, reference.assignment_dir, assignment)
        limits = Limits.from_settings(settings, assignment.time_limit)
        timings["copy"] = time.monotonic() - t0

        outcome = run_pytest(run_dir, assignment.test_files, protected, limits, settings, reporter.on_events)
        timings["pytest_start"] = outcome.startup_seconds or 0.0
        timings["tests"] = max(outcome.duration - timings["pytest_start"], 0.0)
        outcomes, run = decide(outcome, assignment.test_files, limits.timeout)
        run.duration = outcome.duration
        run.properties = {
            "studentCommit": student.commit,
            "referenceCommit": reference.commit,
            "path": student_plan.path,
            "timeLimit": limits.timeout,
            "isolation": outcome.isolation,
            "runner": outcome.runner,
            "phases": {k: round(v, 4) for k, v in timings.items()},
        }
        if outcome.output_dropped:
            run.properties["outputTruncated"] = outcome.output_dropped  # bytes beyond the cap; never a verdict
        run.environment = effective_environment(limits, outcome.isolation, outcome.runner, runtime.python)
        report = build_report(student_plan.path, outcomes, run)
    except (OSError, ValueError) as exc:
        raise InfrastructureError(f"test run failed on the worker: {redact_text(str(exc))[:300]}") from None
    finally:
        if run_dir is not None:
            remove_run_dir(run_dir)
        shutil.rmtree(clones, ignore_errors=True)
    reporter.emit(100, "done", total=report["summary"]["total"], passed=report["summary"]["passed"])
    return report
