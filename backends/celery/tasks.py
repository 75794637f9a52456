"""The Celery tasks: thin sync entry points around the engine-agnostic work in `backends.work`.

Outcome rules (the legacy contract): a student's failing or crashing code is a SUCCESS whose result is the report;
an infrastructure failure (clone failed, runner broke) is a FAILURE whose error is `<ExceptionType>: <message>`,
with any credential in the message redacted and no exception chain (tracebacks land in celery_taskmeta).
The work is imported inside each task so a worker starts even before the first job, and so this module stays
the only place that binds Celery to the work.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from celery import shared_task

from backends.celery import names
from backends.celery.base_task import BaseTask
from common.redact import redact_text

logger = logging.getLogger(__name__)


class TaskInfrastructureError(RuntimeError):
    """What a FAILURE carries: one safe message (the original type is its prefix). Plain args: JSON-safe."""


def _progress_callback(task: BaseTask) -> Callable[[Any], None]:
    """Wire the work's ProgressEvent to PROGRESS rows, bound to this task's id (safe from any thread)."""
    report = task.progress_reporter()

    def on_event(event: Any) -> None:
        metadata = {"stage": getattr(event, "stage", None), **dict(getattr(event, "metadata", {}) or {})}
        report(int(getattr(event, "percentage", 0)), metadata)

    return on_event


def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the work; an async implementation runs to completion here (tasks are sync entry points)."""
    try:
        outcome = fn(*args, **kwargs)
        if inspect.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
        return outcome
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc)
        safe = f"{type(exc).__name__}: {redact_text(message)}"
        logger.warning("task failed: %s", safe)
        raise TaskInfrastructureError(safe) from None


def _already_succeeded(task: BaseTask) -> dict[str, Any] | None:
    """The stored result when this task id already succeeded: a second message for the same id runs nothing.

    Celery's own `worker_deduplicate_successful_tasks` covers only messages the broker *redelivered*; the gateway
    may also send an id again (its outbox, after its record of the first send was lost with the database).
    """
    known = getattr(task.backend, "started_over_success", None)
    if known is not None and known(task.request.id) is False:
        return None  # its STARTED store just now found no SUCCESS: no second read needed
    try:
        meta = task.backend.get_task_meta(task.request.id)
    except Exception:  # noqa: BLE001 - cannot tell: run it (the stored SUCCESS is never overwritten anyway)
        return None
    if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), dict):
        logger.info("task %s already succeeded: not run again", task.request.id)
        return dict(meta["result"])
    return None


@shared_task(bind=True, base=BaseTask, name=names.STUDENT_TESTING)
def student_testing(
    self: BaseTask, test_job: dict[str, Any], execution_backend_properties: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run one student's tests; the report is the result, whatever the student's code did."""
    from backends.work.student_testing import run_student_testing

    if (done := _already_succeeded(self)) is not None:
        return done
    logger.info("running %s %s", names.STUDENT_TESTING, self.request.id)
    self.update_progress(0, {"stage": "started"})
    return _run(run_student_testing, test_job, _progress_callback(self))


@shared_task(bind=True, base=BaseTask, name=names.SUBMISSION_PROCESSING)
def submission_processing(self: BaseTask, submission: dict[str, Any]) -> dict[str, Any]:
    """Record a submission (idempotent in the work)."""
    from backends.work.submission_processing import run_submission_processing

    if (done := _already_succeeded(self)) is not None:
        return done
    self.update_progress(0, {"stage": "started"})
    return _run(run_submission_processing, submission, _progress_callback(self))


@shared_task(bind=True, base=BaseTask, name=names.NOOP)
def noop(self: BaseTask, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """Housekeeping probe: proves a worker consumes `default` and stores results (health, benchmark)."""
    return {"ok": True, "worker": self.request.hostname, "payload": payload or {}}
