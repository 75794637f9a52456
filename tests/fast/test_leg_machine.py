"""The leg state machine, transition by transition, on rows held in memory (no database, no engine)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backends.interface import LegPhase, LegResult, LegState
from common.legacy import Progress, ResultStatus
from gateway.jobs import submission_follow_up
from gateway.legs import machine
from gateway.legs.states import DispatchState, LegOutcome, LegRole
from gateway.store.models import Leg, Result

pytestmark = pytest.mark.fast

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
REPORT = {"summary": {"total": 4, "passed": 3, "failed": 1}, "result": "FAILED"}


# The process's follow-ups, as `start_gateway` installs them (rows join no session here: these legs are in none).
HOOKS = machine.FinishHooks()
submission_follow_up.install(HOOKS)


def leg(role: LegRole = LegRole.PRIMARY, submit_job: bool = True, **values: Any) -> Leg:
    spec = {"kind": "student_testing", "params": {"test_job": {"module": {"url": "u"}}} if submit_job else {}}
    columns = machine.new_leg(
        leg_id="leg-1",
        result_id="row-1",
        role=role,
        engine="celery",
        task_name="ctutor_backend.tasks.student_testing",
        spec={**spec, "properties": {"deployment": "test-assignment/system"}},
        routing=None,
        now=NOW,
        due_at=NOW,
    )
    return Leg(**{**columns, **values})


def row(status: ResultStatus = ResultStatus.SCHEDULED, submit: bool = False) -> Result:
    return Result(id="row-1", status=int(status), result=0.0, result_json=None, submit=submit, test_system_id="leg-1")


FINISH_CASES = [
    # role, phase, row status before, row status after, row result after
    (LegRole.PRIMARY, LegPhase.SUCCEEDED, ResultStatus.RUNNING, ResultStatus.COMPLETED, 0.75),
    (LegRole.PRIMARY, LegPhase.FAILED, ResultStatus.RUNNING, ResultStatus.FAILED, 0.0),
    (LegRole.PRIMARY, LegPhase.CRASHED, ResultStatus.SCHEDULED, ResultStatus.FAILED, 0.0),
    (LegRole.PRIMARY, LegPhase.CANCELLED, ResultStatus.RUNNING, ResultStatus.CANCELLED, 0.0),
    # A row already final (a write-back arrived first) is never overwritten.
    (LegRole.PRIMARY, LegPhase.FAILED, ResultStatus.COMPLETED, ResultStatus.COMPLETED, 0.5),
    # Only a primary leg writes the row.
    (LegRole.SHADOW, LegPhase.SUCCEEDED, ResultStatus.RUNNING, ResultStatus.RUNNING, 0.5),
    (LegRole.SUBMISSION, LegPhase.SUCCEEDED, ResultStatus.COMPLETED, ResultStatus.COMPLETED, 0.5),
]


@pytest.mark.parametrize(("role", "phase", "before", "after", "score"), FINISH_CASES)
def test_finish_writes_only_a_primary_legs_open_row(
    role: LegRole, phase: LegPhase, before: ResultStatus, after: ResultStatus, score: float
) -> None:
    the_leg, the_row = leg(role), row(before)
    the_row.result = 0.5 if before in machine.FINAL_ROW or role != LegRole.PRIMARY else 0.0
    result = LegResult("leg-1", phase, report=REPORT if phase == LegPhase.SUCCEEDED else None, error="boom")
    machine.finish(the_leg, the_row, NOW, phase, result, hooks=HOOKS)
    assert the_leg.finished and the_leg.phase == phase.value and the_leg.outcome == phase.value
    assert the_row.status == int(after)
    assert the_row.result == score


@pytest.mark.parametrize("role", list(LegRole))
def test_every_finished_leg_keeps_its_report_and_error(role: LegRole) -> None:
    succeeded, failed = leg(role), leg(role)
    machine.finish(
        succeeded, row(), NOW, LegPhase.SUCCEEDED, LegResult("leg-1", LegPhase.SUCCEEDED, report=REPORT), hooks=HOOKS
    )
    error = "Git clone of student repository failed: fatal: no such repository"
    machine.finish(failed, row(), NOW, LegPhase.FAILED, LegResult("leg-1", LegPhase.FAILED, error=error), hooks=HOOKS)
    assert succeeded.payload == REPORT and succeeded.error is None
    # A failure keeps the vocabulary's message as its error and the engine's text under `details`.
    assert failed.error == "Git clone of student repository failed."
    assert failed.payload == {"celery_exception": "InfrastructureError", "message": failed.error, "details": error}


def test_a_failed_primary_writes_the_legacy_infrastructure_error() -> None:
    the_leg, the_row = leg(), row(ResultStatus.RUNNING)
    error = "InfrastructureError: Git clone of student repository failed: fatal: no such repository"
    result = LegResult("leg-1", LegPhase.FAILED, error=error, error_type="TaskInfrastructureError")
    machine.finish(the_leg, the_row, NOW, LegPhase.FAILED, result, hooks=HOOKS)
    assert the_row.result_json == {
        "celery_exception": "InfrastructureError",
        "message": "Git clone of student repository failed.",
        "details": "Git clone of student repository failed: fatal: no such repository",
    }


@pytest.mark.parametrize(
    ("role", "busy", "outcome"),
    [
        (LegRole.SHADOW, True, LegOutcome.LATE),  # queued behind a busy but live worker: late, not held against it
        (LegRole.SHADOW, False, LegOutcome.TIMED_OUT),  # its engine said nothing: a timeout
        (LegRole.PRIMARY, True, LegOutcome.TIMED_OUT),  # a student's answer missed its deadline, whatever the cause
    ],
)
def test_a_shadow_leg_queued_behind_a_busy_worker_at_its_deadline_is_late(
    role: LegRole, busy: bool, outcome: LegOutcome
) -> None:
    timed = leg(role)
    machine.time_out(timed, row(ResultStatus.RUNNING) if role == LegRole.PRIMARY else None, NOW, hooks=HOOKS,
                     busy=busy)  # fmt: skip
    assert (timed.outcome, timed.phase, timed.error) == (outcome, LegPhase.FAILED, machine.DEADLINE_MESSAGE)


def test_time_out_reject_and_cancel_end_with_their_own_outcome() -> None:
    timed, the_row = leg(), row(ResultStatus.RUNNING)
    machine.time_out(timed, the_row, NOW, hooks=HOOKS)
    assert (timed.outcome, timed.error) == (LegOutcome.TIMED_OUT, machine.DEADLINE_MESSAGE)
    assert the_row.result_json == {"celery_exception": "DeadlineExceeded", "message": machine.DEADLINE_MESSAGE}

    rejected, rejected_row = leg(), row()
    machine.reject(rejected, rejected_row, NOW, "deployment not found: x", hooks=HOOKS)
    assert (rejected.dispatch_state, rejected.outcome) == (DispatchState.FAILED, LegOutcome.REJECTED)
    assert rejected_row.status == int(ResultStatus.FAILED)
    assert rejected_row.result_json == {
        "celery_exception": "InfrastructureError",
        "message": "The execution backend's deployment does not exist.",
        "details": "deployment not found: x",
    }

    never_sent, sent = leg(), leg(dispatch_state=DispatchState.SENT.value)
    machine.cancel(never_sent, row(), NOW, hooks=HOOKS)
    machine.cancel(sent, row(), NOW, hooks=HOOKS)
    assert never_sent.dispatch_state == DispatchState.FAILED and sent.dispatch_state == DispatchState.SENT
    assert never_sent.outcome == sent.outcome == LegOutcome.CANCELLED


def test_sent_then_retry_later_backs_off() -> None:
    the_leg = leg()
    machine.retry_later(the_leg, "broker down", NOW)
    machine.retry_later(the_leg, "broker down", NOW)
    assert the_leg.dispatch_attempts == 2 and the_leg.next_attempt_at == NOW + timedelta(seconds=1)
    machine.mark_sent(the_leg, "run-9", NOW, deadline_seconds=60)
    assert the_leg.dispatch_state == DispatchState.SENT and the_leg.dispatch_attempts == 3
    assert (the_leg.engine_run_id, the_leg.deadline, the_leg.last_error) == ("run-9", NOW + timedelta(seconds=60), None)
    assert machine.past_deadline(the_leg, NOW + timedelta(seconds=61))
    assert not machine.past_deadline(the_leg, NOW + timedelta(seconds=59))


STATE_CASES = [
    (LegPhase.MISSING, ResultStatus.SCHEDULED, "queued"),
    (LegPhase.QUEUED, ResultStatus.SCHEDULED, "queued"),
    (LegPhase.RUNNING, ResultStatus.RUNNING, "running"),
    (LegPhase.CANCELLING, ResultStatus.CANCELLING, "cancelling"),
]


@pytest.mark.parametrize(("phase", "row_status", "leg_phase"), STATE_CASES)
def test_apply_state_moves_leg_and_open_row(phase: LegPhase, row_status: ResultStatus, leg_phase: str) -> None:
    the_leg, the_row = leg(), row(ResultStatus.PENDING)
    state = LegState("leg-1", phase, native="X", progress=Progress(percentage=40), worker="w1")
    machine.apply_state(the_leg, state, the_row)
    assert (the_leg.phase, the_row.status, the_leg.worker) == (leg_phase, int(row_status), "w1")
    assert the_leg.progress is not None and the_leg.progress["percentage"] == 40


def test_apply_state_never_reopens_a_final_row() -> None:
    the_row = row(ResultStatus.COMPLETED)
    machine.apply_state(leg(), LegState("leg-1", LegPhase.RUNNING, native="STARTED"), the_row)
    assert the_row.status == int(ResultStatus.COMPLETED)


SUBMISSION_CASES = [
    # role, row submit flag, phase → a submission leg follows?
    (LegRole.PRIMARY, True, LegPhase.SUCCEEDED, True),
    (LegRole.PRIMARY, False, LegPhase.SUCCEEDED, False),
    (LegRole.PRIMARY, True, LegPhase.FAILED, False),
    (LegRole.SHADOW, True, LegPhase.SUCCEEDED, False),
]


@pytest.mark.parametrize(("role", "submit", "phase", "follows"), SUBMISSION_CASES)
def test_the_finish_hook_starts_submission_processing(
    role: LegRole, submit: bool, phase: LegPhase, follows: bool
) -> None:
    the_leg, the_row = leg(role), row(ResultStatus.RUNNING, submit=submit)
    result = LegResult("leg-1", phase, report=REPORT if phase == LegPhase.SUCCEEDED else None)
    captured: list[Any] = []
    hooks = machine.FinishHooks()
    submission_follow_up.install(hooks)
    hooks.connect("capture", lambda finished: captured.append(finished) or [])
    machine.finish(the_leg, the_row, NOW, phase, result, hooks=hooks)
    new_legs = submission_follow_up.submission_leg(captured[0])
    assert bool(new_legs) is follows
    if follows:
        (submission,) = new_legs
        assert isinstance(submission, Leg)
        assert (submission.role, submission.dispatch_state) == ("submission", "pending")
        assert submission.next_attempt_at == NOW
        # The testing deployment is not the submission deployment: it is never passed on.
        assert "deployment" not in submission.spec["properties"]
        assert submission.spec["params"]["submission"]["result_id"] == "row-1"


WRITE_BACK_CASES = [
    (ResultStatus.COMPLETED, True, LegOutcome.SUCCEEDED_BY_WRITE_BACK),
    (ResultStatus.FAILED, True, LegOutcome.FAILED_BY_WRITE_BACK),
    (ResultStatus.RUNNING, False, None),
]


@pytest.mark.parametrize(("status", "finished", "outcome"), WRITE_BACK_CASES)
def test_a_write_back_moves_the_leg_to_match_the_row(
    status: ResultStatus, finished: bool, outcome: LegOutcome | None
) -> None:
    the_leg, the_row = leg(), row(status)
    the_row.result_json = REPORT if status == ResultStatus.COMPLETED else None
    machine.apply_write_back(the_leg, the_row, int(status), NOW, hooks=HOOKS)
    assert the_leg.finished is finished and the_leg.outcome == outcome
    assert the_row.status == int(status)  # what the worker wrote stays as it wrote it
    if status == ResultStatus.COMPLETED:
        assert the_leg.payload == REPORT
