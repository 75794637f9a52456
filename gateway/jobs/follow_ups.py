"""Follow-ups of a finished leg, registered on the leg state machine's one finish hook.

Today: submission processing after a completed primary leg of a `submit=true` row, whoever closed the leg
(the reconciler, a status read, or a legacy write-back). Comparisons of shadow legs register here next.
"""

from __future__ import annotations

from collections.abc import Iterable

from backends.interface import TaskKind
from common.legacy import ResultStatus
from gateway.engines.routing import task_name_of
from gateway.legs.machine import FinishedLeg, FinishHooks, new_leg
from gateway.legs.states import LegRole
from gateway.store.models import Base, Leg, Result, new_id


def submission_leg(finished: FinishedLeg) -> Iterable[Base]:
    """The submission-processing leg a finished primary leg starts when its row asked for `submit=true`.

    Only after a COMPLETED verdict (a broken run is no submission), and only once per row. The new leg goes
    through the outbox (due at once), so its dispatch is as durable as any other; its id is the row's
    `submission_flow_run_id`. The backend's `deployment` names the *testing* deployment, so it is not passed
    on; `submission_deployment` names a custom submission deployment instead.
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
    if custom:
        properties["deployment"] = custom
    spec = {
        "kind": TaskKind.SUBMISSION_PROCESSING.value,
        "params": {"submission": {"test_job": test_job, "result_id": row.id}},
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


def install(hooks: FinishHooks) -> None:
    """Register every follow-up of this module (idempotent: named registrations replace themselves)."""
    hooks.connect("submission", submission_leg)
