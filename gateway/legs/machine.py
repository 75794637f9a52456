"""The leg state machine: every transition of a leg, once, for both stores.

A leg is one run of a job on one engine. Its transitions (see `docs/architecture.md` for the table):

- `new_leg`: a PENDING leg in the outbox (the submit path, the task API, a follow-up);
- `mark_sent`: the engine accepted it (SENT), with its deadline;
- `retry_later`: the engine is unreachable; try again after a backoff;
- `reject`: the engine refused it for good (FAILED, outcome `rejected`);
- `retry_infra`: the run crashed or its worker died (not the student's doing): back into the outbox for a new
  attempt under the same id, counted in `infra_retries`, while the budget lasts (`infra_retry_allowed`);
- `apply_state`: a non-final observation (phase, progress, worker);
- `finish`: the end, with the report or error kept on the leg whatever its role; a primary leg writes the
  legacy row (never over a row that is already final: a write-back that arrived first wins); then every
  follow-up handed in runs (`FinishHooks`, built where the app is put together);
- `time_out`, `cancel`, `apply_write_back`: the other ways a leg ends.

Pure: the transitions change loaded rows inside the caller's transaction (reconciler, write-back, cancel) and
never touch the database; the same marks as single statements for the hot paths (`record_sent`, `record_retry`)
are `gateway.store.leg_writer`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from backends.interface import LegPhase, LegResult, LegState
from common.failures import Failure, InfraMessage, describe_failure
from common.legacy import ResultStatus
from common.scoring import score
from gateway.legs.states import DispatchState, LegOutcome, LegRole, verifier_of

if TYPE_CHECKING:  # the rows it moves; it never reads or writes the database itself
    from gateway.store.models import Leg, Result

FINAL_ROW = {ResultStatus.COMPLETED, ResultStatus.FAILED, ResultStatus.CANCELLED, ResultStatus.CRASHED}
DEADLINE_MESSAGE = InfraMessage.DEADLINE_EXCEEDED.value


# ------------------------------------------------------------------------------------------------ the row
def row_is_final(row: Result) -> bool:
    return row.status in FINAL_ROW


def in_flight_status(phase: LegPhase) -> ResultStatus:
    """The row's status while a leg runs; an engine without a trace of a dispatched leg means still queued."""
    if phase in (LegPhase.MISSING, LegPhase.QUEUED):
        return ResultStatus.SCHEDULED
    return phase.result_status()


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


def failure_of(leg: Leg, result: LegResult | None, outcome: LegOutcome | None) -> Failure:
    """The engine-independent failure of a leg that ended badly (see `common.failures`)."""
    error_type = result.error_type if result else None
    if outcome in (LegOutcome.TIMED_OUT, LegOutcome.LATE):
        error_type = "DeadlineExceeded"
    default = InfraMessage.ENGINE_REFUSED if outcome == LegOutcome.REJECTED else InfraMessage.FAILED
    return describe_failure(error_type, leg.error, default)


# -------------------------------------------------------------------------------------------- follow-ups
@dataclass(frozen=True)
class FinishedLeg:
    """What a follow-up sees: the leg just finished, its row (if any) and the time of the transition."""

    leg: Leg
    row: Result | None
    now: datetime


# A follow-up returns the rows to add (new legs, comparisons): ORM objects of `gateway.store.models`.
FollowUp = Callable[[FinishedLeg], Iterable[Any]]
# Adds a finished leg's follow-up rows to the leg's own transaction (`gateway.store.leg_writer.join_leg`).
JoinRows = Callable[["Leg", list[Any]], None]


class FinishHooks:
    """Follow-ups of a finished leg (submission processing, comparisons, metrics): each returns rows to add.

    One set per process, built where the app is put together (`gateway.jobs.bootstrap.start_gateway`) and handed
    to whoever finishes legs (the reconciler's rooms, the job services). `join` adds the new rows to the finished
    leg's own transaction, so a follow-up is committed exactly when the end of its leg is, and a follow-up leg goes
    through the outbox like any other.
    """

    def __init__(self, join: JoinRows | None = None) -> None:
        self._follow_ups: dict[str, FollowUp] = {}
        self._join = join

    def connect(self, name: str, follow_up: FollowUp) -> None:
        """Register (or replace) a follow-up under a name: installing twice is harmless."""
        self._follow_ups[name] = follow_up

    def disconnect(self, name: str) -> None:
        self._follow_ups.pop(name, None)

    def run(self, finished: FinishedLeg) -> list[Any]:
        added: list[Any] = []
        for follow_up in self._follow_ups.values():
            added.extend(follow_up(finished))
        if self._join is not None:
            self._join(finished.leg, added)
        return added


# -------------------------------------------------------------------------------------------------- new
def new_leg(
    *,
    leg_id: str,
    result_id: str | None,
    role: LegRole,
    engine: str,
    task_name: str,
    spec: dict[str, Any],
    routing: dict[str, Any] | None,
    now: datetime,
    due_at: datetime,
    deadline: datetime | None = None,
) -> dict[str, Any]:
    """A PENDING leg's column values (insert them with Core, or `Leg(**values)`), due for dispatch at `due_at`.

    `deadline` is for a shadow leg (its setting's deadline counts from admission, sent or not); other legs get
    theirs when their engine accepts them."""
    return {
        "id": leg_id,
        "result_id": result_id,
        "role": role.value,
        "engine": engine,
        "task_name": task_name,
        "spec": spec,
        "routing": routing,
        "phase": LegPhase.QUEUED.value,
        "finished": False,
        "dispatch_state": DispatchState.PENDING.value,
        "dispatch_attempts": 0,
        "infra_retries": 0,
        "dispatch_faults": 0,
        "next_attempt_at": due_at,
        "deadline": deadline,
        "compare_due": False,
        "created_at": now,
        "updated_at": now,
    }


# ------------------------------------------------------------------------------------------------- sent
def mark_sent(leg: Leg, run_id: str | None, now: datetime, deadline_seconds: int) -> None:
    leg.dispatch_state = DispatchState.SENT.value
    leg.dispatch_attempts = (leg.dispatch_attempts or 0) + 1
    leg.engine_run_id = run_id or leg.id
    leg.dispatched_at = now
    leg.next_attempt_at = None
    # A shadow leg's deadline is set when it is created (from its setting) and kept.
    leg.deadline = leg.deadline or now + timedelta(seconds=deadline_seconds)
    leg.last_error = None


# ------------------------------------------------------------------------------------------- retry later
def backoff_seconds(attempts: int, cap: float = 60.0) -> float:
    """0.5 s, 1 s, 2 s ... capped: fast recovery after a short outage, no hammering during a long one."""
    return float(min(cap, 0.5 * 2 ** max(0, attempts - 1)))


def next_attempt(now: datetime, attempts: int) -> datetime:
    return now + timedelta(seconds=backoff_seconds(attempts))


def retry_later(leg: Leg, error: str | None, now: datetime) -> None:
    leg.dispatch_attempts = (leg.dispatch_attempts or 0) + 1
    leg.last_error = error
    leg.next_attempt_at = next_attempt(now, leg.dispatch_attempts)


# ------------------------------------------------------------------------------------- infrastructure retry
INFRA_PHASES = {LegPhase.CRASHED}
# Why a finished run's report could not be read (the adapters' `error_type`): the run may have been fine, the
# reading was not; never the student's doing.
UNREADABLE_TYPES = frozenset({"ResultUnavailable", "UndecodableResult", "BadResult"})
UNREADABLE_ERROR = "the run ended but its report could not be read"


def report_unreadable(state: LegState, result: LegResult) -> bool:
    """A final observation whose report cannot be had: the engine says it succeeded but there is no report object
    (a Prefect runner whose result storage the API cannot read, a Celery SUCCESS without a usable result, a
    result gone between the state and the read), or the adapter says it could not read or decode it (a pickled
    or foreign Celery result: another worker on the shared queues answered). An infrastructure failure (re-run
    within the budget, avoiding that worker where the engine allows, then FAILED), never a score."""
    if not state.phase.is_final:
        return False
    if result.error_type in UNREADABLE_TYPES:
        return True
    phase = result.phase if result.phase.is_final else state.phase
    return phase == LegPhase.SUCCEEDED and not isinstance(result.report, dict)


def as_unreadable(state: LegState, result: LegResult) -> tuple[LegState, LegResult]:
    """The same observation as the infrastructure failure it is: CRASHED, with the reading's error."""
    error = result.error or UNREADABLE_ERROR
    error_type = result.error_type if result.error_type in UNREADABLE_TYPES else "ResultUnavailable"
    crashed = LegResult(leg_id=result.leg_id, phase=LegPhase.CRASHED, error=error, error_type=error_type)
    return replace(state, phase=LegPhase.CRASHED, error=error), crashed


def infra_retry_allowed(leg: Leg, state: LegState, budget: int) -> bool:
    """A crashed or lost run the budget still covers. Never for a cancel, or a shadow's (it must stay cheap)."""
    if leg.role == LegRole.SHADOW or leg.phase == LegPhase.CANCELLING:
        return False
    if state.phase not in INFRA_PHASES and not state.lost:
        return False
    return (leg.infra_retries or 0) < budget


def retry_infra(leg: Leg, row: Result | None, now: datetime, reason: str | None) -> None:
    """The same leg runs again: back to the outbox, due now; the dispatcher reruns it (it was sent before)."""
    leg.infra_retries = (leg.infra_retries or 0) + 1
    leg.dispatch_state = DispatchState.PENDING.value
    leg.next_attempt_at = now
    leg.phase = LegPhase.QUEUED.value
    leg.native_state = None
    leg.worker = None
    leg.started_at = None
    leg.last_error = f"attempt {leg.infra_retries} failed in the infrastructure, running it again: {reason or ''}"
    if row is not None and leg.role == LegRole.PRIMARY and not row_is_final(row):
        row.status = int(ResultStatus.SCHEDULED)


# Sends that fail for a reason that is not an outage (a job its engine cannot take: a malformed parameter set,
# an adapter bug) are retried this many times in all, with the usual backoff, then the leg is rejected.
DISPATCH_FAULT_LIMIT = 5


def retry_fault(leg: Leg, row: Result | None, error: str | None, now: datetime, *, hooks: FinishHooks) -> bool:
    """A send failed for a reason that is not an outage: retry later, or reject at the bound; True if rejected."""
    leg.dispatch_faults = (leg.dispatch_faults or 0) + 1
    if leg.dispatch_faults >= DISPATCH_FAULT_LIMIT:
        leg.dispatch_attempts = (leg.dispatch_attempts or 0) + 1
        reject(leg, row, now, f"Dispatch failed {leg.dispatch_faults} times, giving up: {error}", hooks=hooks)
        return True
    retry_later(leg, error, now)
    return False


def adopt_run_id(leg: Leg, row: Result | None, previous: str | None = None) -> None:
    """A primary leg's row shows the engine's run id as its `test_system_id` (the contract: the Prefect flow run
    id) once the engine has one, unless the row already moved on to another run. `previous`: the leg's run id
    before this observation. The gateway's leg id keeps resolving everywhere (`store.runs.find_leg`)."""
    run_id = leg.engine_run_id
    if row is None or leg.role != LegRole.PRIMARY or not run_id or row.test_system_id == run_id:
        return
    if row.test_system_id in {leg.id, previous}:
        row.test_system_id = run_id


# ------------------------------------------------------------------------------------------ state applied
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
        previous, leg.engine_run_id = leg.engine_run_id, state.engine_run_id
        adopt_run_id(leg, row, previous)
    if state.stalled:
        leg.last_error = state.stalled
    if row is not None and leg.role == LegRole.PRIMARY and not row_is_final(row):
        wanted = int(in_flight_status(phase))
        if row.status != wanted:
            row.status = wanted


def needs_update(leg: Any, state: LegState | None, now: datetime) -> bool:
    """Would this observation change the leg (or its row)? `leg` may be a loaded `Leg` or a row of its columns.

    Mirrors `apply_state`, `finish_observed` and the deadline: the reconciler reads many open legs without
    locks and takes only those for which this is True, so an unchanged leg costs one read and no write.
    """
    if past_deadline(leg, now):
        return True
    if state is None:
        return False
    if state.phase.is_final or state.lost:  # a lost run is run again (`infra_retry_allowed`), whatever its phase
        return True
    if state.phase != LegPhase.MISSING and state.phase.value != leg.phase:
        return True
    if state.native != leg.native_state:
        return True
    if state.progress is not None and state.progress.model_dump() != leg.progress:
        return True
    return bool(
        (leg.started_at is None and state.started_at is not None)
        or (state.worker and state.worker != leg.worker)
        or (state.queue and state.queue != leg.queue)
        or (state.engine_run_id and state.engine_run_id != leg.engine_run_id)
        or (state.stalled and state.stalled != leg.last_error)
    )


# ----------------------------------------------------------------------------------------------- finished
def finish(
    leg: Leg,
    row: Result | None,
    now: datetime,
    phase: LegPhase,
    result: LegResult | None = None,
    *,
    outcome: LegOutcome | None = None,
    error: str | None = None,
    hooks: FinishHooks,
) -> None:
    """Close a leg for good, keep its report or error, write a primary leg's row, then run the follow-ups."""
    leg.finished = True
    leg.phase = phase.value
    leg.outcome = (outcome or LegOutcome(phase.value)).value
    leg.finished_at = leg.finished_at or now
    report = result.report if result else None
    if phase == LegPhase.SUCCEEDED and not isinstance(report, dict) and outcome not in _BY_WRITE_BACK:
        # Succeeded without a report object: the reading failed, not the student (see `report_unreadable`).
        phase, outcome = LegPhase.CRASHED, None
        result = LegResult(leg_id=leg.id, phase=phase, error=UNREADABLE_ERROR, error_type="ResultUnavailable")
        leg.phase = phase.value
        leg.outcome = LegOutcome(phase.value).value
        report = None
    leg.error = error or (result.error if result else None)
    leg.payload = report
    failure = None
    if phase in (LegPhase.FAILED, LegPhase.CRASHED):
        # One vocabulary whatever the engine: the stable message on the leg, the engine's text under `details`.
        failure = failure_of(leg, result, outcome)
        leg.error = failure.message.value
        leg.payload = failure.as_result_json(leg.engine)
    if leg.progress is not None and phase == LegPhase.SUCCEEDED:
        leg.progress = {**leg.progress, "percentage": 100, "status": "finished"}
    # Under the `verified` answer policy the row waits for the old engine's verdict (gateway.compare.answer);
    # a cancellation is written at once.
    waits = phase != LegPhase.CANCELLED and verifier_of(leg.role, leg.routing) is not None
    if row is not None and leg.role == LegRole.PRIMARY and not row_is_final(row) and not waits:
        _write_row(leg, row, phase, result, report, failure)
    hooks.run(FinishedLeg(leg, row, now))


def _write_row(
    leg: Leg,
    row: Result,
    phase: LegPhase,
    result: LegResult | None,
    report: dict[str, Any] | None,
    failure: Failure | None,
) -> None:
    if phase == LegPhase.SUCCEEDED:
        row.status = int(ResultStatus.COMPLETED)
        if report is not None:
            row.result = result.score if result is not None and result.score is not None else score(report)
            row.result_json = report
    elif phase == LegPhase.CANCELLED:
        row.status = int(ResultStatus.CANCELLED)
    else:
        row.status = int(ResultStatus.FAILED)
        row.result = 0.0
        row.result_json = (failure or failure_of(leg, None, None)).as_result_json(leg.engine)


def write_row_from(leg: Leg, row: Result) -> None:
    """Write the row from a finished leg's stored answer (its report, or its failure in the one vocabulary): how a
    verified canary job's row is written once both engines have spoken, from whichever leg answers."""
    phase = LegPhase(leg.phase)
    report = leg.payload if phase == LegPhase.SUCCEEDED and isinstance(leg.payload, dict) else None
    if phase in (LegPhase.FAILED, LegPhase.CRASHED):
        row.status = int(ResultStatus.FAILED)
        row.result = 0.0
        row.result_json = (
            leg.payload if isinstance(leg.payload, dict) else failure_of(leg, None, None).as_result_json(leg.engine)
        )
        return
    _write_row(leg, row, phase, None, report, None)


def finish_observed(
    leg: Leg, row: Result | None, state: LegState, result: LegResult, now: datetime, *, hooks: FinishHooks
) -> None:
    """The engine says the leg is over and its result was read: finish with what the engine reported."""
    apply_state(leg, state, None)
    finish(leg, row, now, result.phase if result.phase.is_final else state.phase, result, hooks=hooks)
    leg.finished_at = state.finished_at or now


def reject(leg: Leg, row: Result | None, now: datetime, error: str | None, *, hooks: FinishHooks) -> None:
    """The engine refused the leg for good: it leaves the outbox and ends FAILED (its row too)."""
    leg.dispatch_state = DispatchState.FAILED.value
    leg.last_error = error
    finish(leg, row, now, LegPhase.FAILED, outcome=LegOutcome.REJECTED, error=error, hooks=hooks)


def time_out(leg: Leg, row: Result | None, now: datetime, *, hooks: FinishHooks, busy: bool = False) -> None:
    """The leg passed its deadline. `busy`: its engine said last that it waits behind a busy but live worker
    (`LegState.busy`); a shadow leg so is `late` (not held against the engine), any other leg timed out."""
    outcome = LegOutcome.LATE if busy and leg.role == LegRole.SHADOW else LegOutcome.TIMED_OUT
    finish(leg, row, now, LegPhase.FAILED, outcome=outcome, error=DEADLINE_MESSAGE, hooks=hooks)


def past_deadline(leg: Any, now: datetime) -> bool:
    return leg.deadline is not None and now > leg.deadline


def cancel(leg: Leg, row: Result | None, now: datetime, *, hooks: FinishHooks) -> None:
    """Cancelled by a client; a leg never sent leaves the outbox (there is nothing to tell its engine)."""
    if leg.dispatch_state != DispatchState.SENT:
        leg.dispatch_state = DispatchState.FAILED.value
    finish(leg, row, now, LegPhase.CANCELLED, hooks=hooks)


_WRITE_BACK_OUTCOME = {
    LegPhase.SUCCEEDED: LegOutcome.SUCCEEDED_BY_WRITE_BACK,
    LegPhase.FAILED: LegOutcome.FAILED_BY_WRITE_BACK,
    LegPhase.CANCELLED: LegOutcome.CANCELLED_BY_WRITE_BACK,
    LegPhase.CRASHED: LegOutcome.CRASHED_BY_WRITE_BACK,
}
_BY_WRITE_BACK = frozenset(_WRITE_BACK_OUTCOME.values())  # the legacy flow wrote the row: it is authoritative


def apply_write_back(leg: Leg, row: Result, status: int, now: datetime, *, hooks: FinishHooks) -> None:
    """A legacy flow wrote the row itself: move its leg to match (the row already holds what it wrote)."""
    phase = status_to_phase(status)
    if phase is None or leg.finished:
        return
    if phase.is_final:
        result = LegResult(leg_id=leg.id, phase=phase, report=row.result_json if phase == LegPhase.SUCCEEDED else None)
        finish(leg, row, now, phase, result, outcome=_WRITE_BACK_OUTCOME[phase], hooks=hooks)
        return
    leg.phase = phase.value
    if phase == LegPhase.RUNNING and leg.started_at is None:
        leg.started_at = now


def apply_shadow_write_back(
    leg: Leg, status: int | None, report: dict[str, Any] | None, now: datetime, *, hooks: FinishHooks
) -> None:
    """A legacy flow running a *shadow* leg wrote back: it lands on the leg, never on the row (fenced).

    A report sent before the final status is kept on the leg until the status comes."""
    if leg.finished:
        return
    if report is not None:
        leg.payload = report
    phase = status_to_phase(status) if status is not None else None
    if phase is None:
        return
    if phase.is_final:
        kept = leg.payload if phase == LegPhase.SUCCEEDED else None
        result = LegResult(leg_id=leg.id, phase=phase, report=kept)
        finish(leg, None, now, phase, result, outcome=_WRITE_BACK_OUTCOME[phase], hooks=hooks)
        return
    leg.phase = phase.value
    if phase == LegPhase.RUNNING and leg.started_at is None:
        leg.started_at = now
