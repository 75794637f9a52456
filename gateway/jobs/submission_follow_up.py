"""Follow-ups of a finished leg, registered on the leg state machine's one finish hook.

Today: submission processing after a completed primary leg of a `submit=true` row, whoever closed the leg
(the reconciler, a status read, or a legacy write-back). Comparisons of shadow legs register here next.

One rule starts submission processing, on two paths: the leg's end (`submission_leg`, the finish hook) and a
client asking `submit=true` again for a run that already completed (`request_submission`, the platform's "test,
then submit the same commit"). Both build the leg with `submission_leg`, and at most one exists per row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import or_, select

from backends.interface import TaskKind
from common.legacy import ResultStatus
from gateway.engines.routing import task_name_of
from gateway.jobs.legacy_submission import legacy_submission_params
from gateway.legs.machine import FinishedLeg, FinishHooks, new_leg
from gateway.legs.states import LegOutcome, LegRole
from gateway.runtime import GatewayState
from gateway.store.models import Base, Leg, Result, new_id, utcnow
from gateway.store.runs import row_leg


def submission_leg(finished: FinishedLeg) -> Iterable[Base]:
    """The submission-processing leg a finished primary leg starts when its row asked for `submit=true`.

    Only after a COMPLETED verdict (a broken run is no submission), and only once per row. The new leg goes
    through the outbox (due at once), so its dispatch is as durable as any other; its id is the row's
    `submission_flow_run_id`. The backend's `deployment` names the *testing* deployment, so it is not passed
    on; `submission_deployment` names a custom submission deployment instead: one the gateway did not write,
    so it gets the platform's own parameter set (`legacy_submission_params`: a credential name, never a token).
    """
    leg, row, now = finished.leg, finished.row, finished.now
    if not _wants_submission(leg, row):
        return []
    assert row is not None
    test_job = (leg.spec or {}).get("params", {}).get("test_job")
    if not isinstance(test_job, dict):
        return []
    properties = {k: v for k, v in ((leg.spec or {}).get("properties") or {}).items() if k != "deployment"}
    custom = properties.pop("submission_deployment", None)
    params: dict[str, Any] = {"submission": {"test_job": test_job, "result_id": row.id}}
    if custom:
        properties["deployment"] = custom
        params = legacy_submission_params(test_job, row, (leg.spec or {}).get("assignment"))
    spec = {
        "kind": TaskKind.SUBMISSION_PROCESSING.value,
        "params": params,
        "properties": properties,
        "priority": 8,
    }
    values = new_leg(
        leg_id=new_id(),
        result_id=row.id,
        role=LegRole.SUBMISSION,
        engine=leg.engine,
        task_name=task_name_of(TaskKind.SUBMISSION_PROCESSING),
        spec=spec,
        routing={"rule": "submit=true after a completed primary leg", "primary_leg": leg.id},
        now=now,
        due_at=now,
    )
    return [Leg(**values)]


def _wants_submission(leg: Leg, row: Result | None) -> bool:
    return (
        row is not None
        and leg.role == LegRole.PRIMARY
        and bool(row.submit)
        and row.status == int(ResultStatus.COMPLETED)
    )


async def request_submission(state: GatewayState, row_id: str) -> str | None:
    """`submit=true` asked of an existing run: mark the row submitted and, once it completed, start submission.

    Under the row's lock, so a leg finishing at the same moment and this request agree: whichever commits second
    sees the other's write (a finish that saw `submit=false` is followed by this request seeing COMPLETED, and a
    request that flipped `submit` first is seen by the finish hook). Returns the submission leg's id (an existing
    one if the row already has it: the request is idempotent), or None while the run is still in flight.
    """
    async with state.sessions() as session, session.begin():
        row = await session.get(Result, row_id, with_for_update=state.is_postgres)
        if row is None:
            return None
        now = utcnow()
        if not row.submit:
            row.submit = True
            row.updated_at = now
        existing = await session.scalar(
            select(Leg.id).where(Leg.result_id == row.id, Leg.role == LegRole.SUBMISSION, _not_failed()).limit(1)
        )
        if existing is not None or row.status != int(ResultStatus.COMPLETED) or not row.test_system_id:
            return existing
        primary = await row_leg(session, row)
        if primary is None:
            return None
        legs = list(submission_leg(FinishedLeg(primary, row, now)))
        session.add_all(legs)
        return legs[0].id if legs else None


def _not_failed() -> Any:
    """A submission leg that still counts: open, or ended well. One that failed leaves room for another try."""
    return or_(Leg.finished.is_(False), Leg.outcome.in_(SUBMITTED))


# How a submission leg ends well: the engine ran it, or a flow the gateway did not write reported it done.
SUBMITTED = (LegOutcome.SUCCEEDED.value, LegOutcome.SUCCEEDED_BY_WRITE_BACK.value)


def submission_outcome(finished: FinishedLeg) -> Iterable[Base]:
    """A submission leg's end, shown on its row (`properties.submission`: status, run id, error), so a failed
    submission is visible where the client looks. A failed one also takes back the row's `submit`: nothing was
    submitted (as the platform's rows said until its flow had made the merge request), the row no longer counts
    against `max_submissions`, and asking `submit=true` again starts a new submission."""
    leg, row = finished.leg, finished.row
    if leg.role != LegRole.SUBMISSION or row is None:
        return []
    succeeded = leg.outcome in SUBMITTED
    record = {
        "status": "COMPLETED" if succeeded else "FAILED",
        "run_id": leg.engine_run_id or leg.id,
        "task_id": leg.id,
        "outcome": leg.outcome,
        # The stable message only: the engine's own text may name internal hosts (admins read it on the task).
        "error": None if succeeded else leg.error,
    }
    row.properties = {**(row.properties or {}), "submission": record}
    if not succeeded:
        row.submit = False
    row.updated_at = finished.now
    return []


def install(hooks: FinishHooks) -> None:
    """Register every follow-up of this module (idempotent: named registrations replace themselves)."""
    hooks.connect("submission", submission_leg)
    hooks.connect("submission_outcome", submission_outcome)
