"""How a leg moves: applying what an engine said, finishing it, and writing the legacy row from it.

The rules live here once; the reconciler, a status read's single-leg refresh and the write-back all use them.
Only a *primary* leg ever writes the `result` row, and never over a row that already holds a final status
(a write-back that arrived first wins).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from backends.interface import LegPhase, LegResult, LegState, TaskKind
from backends.models import ResultStatus
from gateway.scoring import score
from gateway.store.models import Leg, Result, new_id

FINAL_ROW = {ResultStatus.COMPLETED, ResultStatus.FAILED, ResultStatus.CANCELLED, ResultStatus.CRASHED}
TIMED_OUT = "timed_out"
DEADLINE_MESSAGE = "The test run did not finish before its deadline."


def row_is_final(row: Result) -> bool:
    return row.status in FINAL_ROW


def in_flight_status(phase: LegPhase) -> ResultStatus:
    """The row's status while a leg runs; an engine without a trace of a dispatched leg means still queued."""
    if phase in (LegPhase.MISSING, LegPhase.QUEUED):
        return ResultStatus.SCHEDULED
    return phase.result_status()


def mark_sent(leg: Leg, run_id: str | None, now: datetime, deadline_seconds: int) -> None:
    leg.dispatch_state = "sent"
    leg.dispatch_attempts = (leg.dispatch_attempts or 0) + 1
    leg.engine_run_id = run_id or leg.id
    leg.dispatched_at = now
    leg.next_attempt_at = None
    leg.deadline = now + timedelta(seconds=deadline_seconds)


def apply_state(leg: Leg, state: LegState, row: Result | None) -> None:
    """Record a non-final observation (phase, native state, progress, worker) on the leg and its row."""
    phase = state.phase
    if phase != LegPhase.MISSING:
        leg.phase = phase.value
    leg.native_state = state.native
    if state.progress is not None:
        leg.progress = state.progress.model_dump()
    leg.started_at = leg.started_at or state.started_at
    leg.worker = state.worker or leg.worker
    leg.queue = state.queue or leg.queue
    if state.engine_run_id:
        leg.engine_run_id = state.engine_run_id
    if state.stalled:
        leg.last_error = state.stalled
    if row is not None and leg.role == "primary" and not row_is_final(row):
        wanted = int(in_flight_status(phase))
        if row.status != wanted:
            row.status = wanted


def infra_error_json(engine: str, error_type: str | None, message: str | None) -> dict[str, Any]:
    return {f"{engine}_exception": error_type or "InfrastructureError", "message": message or "The test run failed."}


def finish(
    leg: Leg,
    row: Result | None,
    now: datetime,
    phase: LegPhase,
    result: LegResult | None = None,
    *,
    outcome: str | None = None,
    error: str | None = None,
) -> None:
    """Close a leg for good and, for a primary leg, write the legacy row (unless already final)."""
    leg.finished = True
    leg.phase = phase.value
    leg.outcome = outcome or phase.value
    leg.finished_at = leg.finished_at or now
    leg.error = error or (result.error if result else None)
    report = result.report if result else None
    if leg.progress is not None and phase == LegPhase.SUCCEEDED:
        leg.progress = {**leg.progress, "percentage": 100, "status": "finished"}
    if row is None or leg.role == SUBMISSION_ROLE:
        leg.payload = report  # the task's own answer (a submission leg must not show the row's test report)
        return
    if leg.role != "primary" or row_is_final(row):
        return
    if phase == LegPhase.SUCCEEDED:
        row.status = int(ResultStatus.COMPLETED)
        if report is not None:
            row.result = score(report)
            row.result_json = report
    elif phase == LegPhase.CANCELLED:
        row.status = int(ResultStatus.CANCELLED)
    else:
        error_type = result.error_type if result else None
        if outcome == TIMED_OUT:
            error_type = "DeadlineExceeded"
        row.status = int(ResultStatus.FAILED)
        row.result = 0.0
        row.result_json = infra_error_json(leg.engine, error_type, leg.error)


def status_to_phase(status: int) -> LegPhase | None:
    """A written-back row status as a leg phase (None for statuses that say nothing about the leg)."""
    mapping = {
        ResultStatus.COMPLETED: LegPhase.SUCCEEDED,
        ResultStatus.FAILED: LegPhase.FAILED,
        ResultStatus.CANCELLED: LegPhase.CANCELLED,
        ResultStatus.CRASHED: LegPhase.CRASHED,
        ResultStatus.RUNNING: LegPhase.RUNNING,
        ResultStatus.PENDING: LegPhase.QUEUED,
        ResultStatus.SCHEDULED: LegPhase.QUEUED,
        ResultStatus.CANCELLING: LegPhase.CANCELLING,
    }
    try:
        return mapping.get(ResultStatus(status))
    except ValueError:
        return None


SUBMISSION_ROLE = "submission"
SUBMISSION_TASK_NAME = "ctutor_backend.tasks.submission_processing"


def submission_leg(leg: Leg, row: Result | None, now: datetime) -> Leg | None:
    """The submission-processing leg a finished primary leg starts when its row asked for `submit=true`.

    Only after a COMPLETED verdict (a broken run is no submission). The new leg goes through the outbox (due at
    once), so its dispatch is as durable as any other; its id is the row's `submission_flow_run_id`. The
    backend's `deployment` names the *testing* deployment, so it is not passed on; `submission_deployment`
    names a custom submission deployment instead.
    """
    if row is None or leg.role != "primary" or not row.submit or row.status != int(ResultStatus.COMPLETED):
        return None
    test_job = (leg.spec or {}).get("params", {}).get("test_job")
    if not isinstance(test_job, dict):
        return None
    properties = {k: v for k, v in ((leg.spec or {}).get("properties") or {}).items() if k != "deployment"}
    custom = properties.pop("submission_deployment", None)
    if custom:
        properties["deployment"] = custom
    spec = {
        "kind": TaskKind.SUBMISSION_PROCESSING.value,
        "params": {"submission": {"test_job": test_job, "result_id": row.id}},
        "properties": properties,
        "priority": 8,
    }
    return Leg(
        id=new_id(),
        result_id=row.id,
        role=SUBMISSION_ROLE,
        engine=leg.engine,
        task_name=SUBMISSION_TASK_NAME,
        spec=spec,
        routing={"rule": "submit=true after a completed primary leg", "primary_leg": leg.id},
        phase="queued",
        dispatch_state="pending",
        dispatch_attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
