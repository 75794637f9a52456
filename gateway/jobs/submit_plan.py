"""The submit path's plan: the new run's row and legs — the route (primary engine, cutover stage) and the shadow
legs the shadow policy samples — as column values, before anything is written.

When the primary leg is due depends on who sends it (`DUE_AFTER`); shadow legs are due at once and are sent by
the outbox relay after the primary's first send.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from backends.interface import TaskKind
from common.legacy import Repository, ResultStatus, TestJob
from common.redact import strip_credentials
from gateway.cutover.stages import AnswerPolicy, CutoverConfig
from gateway.engines.dispatcher import SendBy
from gateway.engines.routing import RoutePlan, UnsupportedBackend, plan_route, task_name_of
from gateway.engines.shadowing import ExperimentKind, ShadowDecision, ShadowPolicy
from gateway.jobs.credential_binding import bound
from gateway.jobs.errors import BadJobRequest
from gateway.jobs.legacy_submission import assignment_of
from gateway.legs.machine import new_leg
from gateway.legs.states import LegRole
from gateway.schemas import TestCreate
from gateway.store.accounts import Principal
from gateway.store.models import CourseContent, CourseMember, ExecutionBackend, new_id, utcnow
from gateway.store.outbox import OUTBOX_LEASE

# A fresh leg belongs to its request for this long; the reconciler must not race it for the first send.
OUTBOX_GRACE = timedelta(seconds=15)
# When a new primary leg is due in the outbox, by who sends it: the request right after its commit (the outbox
# takes over after a grace, if that did not happen), a relay woken by the commit (at once), or this process's
# relay, handed the leg (its lease: any reconciler takes over only if this process stopped before the send).
DUE_AFTER = {SendBy.REQUEST: OUTBOX_GRACE, SendBy.RELAY: timedelta(0), SendBy.HAND_OVER: OUTBOX_LEASE}
# The legacy task name of a test run, looked up once (not per request).
STUDENT_TESTING_TASK = task_name_of(TaskKind.STUDENT_TESTING)


def _test_job(
    body: TestCreate, content: CourseContent, member: CourseMember, backend: ExecutionBackend, commit: str
) -> TestJob:
    if body.provider_url and body.project:
        url = f"{body.provider_url.rstrip('/')}/{body.project.strip('/')}.git"
    elif member.repository_url:
        url = member.repository_url
    else:
        raise BadJobRequest("No repository for this course member: give provider_url and project")
    # Never stored (leg.spec) or sent (task kwargs, flow parameters) with credentials: the worker resolves them
    # by the name in `credential`.
    url = strip_credentials(url)
    reference = None
    if content.reference_url:
        reference = Repository(
            url=strip_credentials(content.reference_url), commit=content.reference_commit, path=content.directory
        )
        reference = bound(reference, content.reference_credential, content.reference_url)
    return TestJob(
        user_id=member.user_id,
        course_member_id=member.id,
        course_content_id=content.id,
        execution_backend_id=backend.id,
        module=bound(
            Repository(url=url, commit=commit, path=content.directory), member.credential, member.repository_url
        ),  # fmt: skip
        reference=reference,
    )


@dataclass(frozen=True)
class NewRun:
    """A new run ready to insert: the row's and the legs' column values, and what dispatch needs."""

    row: dict[str, Any]
    leg: dict[str, Any]
    plan: RoutePlan
    spec: dict[str, Any]
    # Shadow legs (column values), written with the row and dispatched after the primary, off the request.
    shadows: tuple[dict[str, Any], ...] = ()
    # Who sends the primary leg (`GatewayState.send_by`): this request, or the outbox relay.
    send_by: SendBy = SendBy.REQUEST


def new_run(
    principal: Principal,
    body: TestCreate,
    content: CourseContent,
    member: CourseMember,
    backend: ExecutionBackend | None,
    cutover: CutoverConfig | None = None,
    send_by: Callable[[str], SendBy] = lambda _engine: SendBy.REQUEST,
) -> NewRun:
    """Raises the contract's 400s for an unsupported backend or a member without a repository.

    `send_by(engine)`: who sends the primary leg, which decides when it is due (`DUE_AFTER`)."""
    if backend is None:
        raise BadJobRequest("execution_backend type not supported!")
    try:
        plan = plan_route(backend.type, backend.id, cutover, content.id, member.id)
    except UnsupportedBackend as exc:
        raise BadJobRequest(str(exc)) from None
    commit = body.version_identifier or ""
    job = _test_job(body, content, member, backend, commit)
    leg_id = new_id()
    row_id = new_id()
    now = utcnow()
    sender = send_by(plan.primary)
    row: dict[str, Any] = {
        "id": row_id,
        "submit": bool(body.submit),
        "course_member_id": member.id,
        "course_content_id": content.id,
        "course_submission_group_id": None,
        "course_content_type_id": content.course_content_type_id,
        "execution_backend_id": backend.id,
        "test_system_id": leg_id,
        "result": 0.0,
        "result_json": None,
        "properties": None,
        "version_identifier": commit,
        "status": int(ResultStatus.SCHEDULED),
        "version": 0,
        "created_at": now,
        "updated_at": now,
        "created_by": principal.user_id,
        "updated_by": principal.user_id,
    }
    spec: dict[str, Any] = {
        "kind": TaskKind.STUDENT_TESTING.value,
        "params": {"test_job": job.model_dump(mode="json", exclude={"module": {"token"}, "reference": {"token"}})},
        "properties": backend.properties or {},
        "priority": 8,
        # The content as a submission deployment the gateway did not write needs it (its `assignment`).
        "assignment": assignment_of(content),
    }
    leg = new_leg(
        leg_id=leg_id,
        result_id=row_id,
        role=LegRole.PRIMARY,
        engine=plan.primary,
        task_name=STUDENT_TESTING_TASK,
        spec=spec,
        routing=plan.decision,
        now=now,
        due_at=now + DUE_AFTER[sender],
    )
    return NewRun(row=row, leg=leg, plan=plan, spec=spec, send_by=sender)


def shadow_spec(spec: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    """The primary's job as a shadow runs it: `submit` false, marked `shadow`, the setting's properties laid over."""
    params = dict(spec["params"])
    if isinstance(params.get("test_job"), dict):
        params["test_job"] = {**params["test_job"], "submit": False}
    return {**spec, "params": params, "properties": {**(spec.get("properties") or {}), **properties}, "shadow": True}


async def with_shadows(shadow: ShadowPolicy, run: NewRun, content: CourseContent, backend: ExecutionBackend) -> NewRun:
    """Ask the shadow policy; add the legs it wants and record its decision on the primary leg."""
    # Under a cutover stage the stage names the shadow engine and fraction (None: the stage shadows nothing).
    staged = (run.plan.shadow, run.plan.shadow_fraction) if "stage" in run.plan.decision else None
    decision = await shadow.decide(run.plan.primary, backend.id, content.id, staged)
    shadows = []
    now = run.leg["created_at"]
    for planned in decision.legs:
        shadows.append(
            new_leg(
                leg_id=new_id(),
                result_id=run.row["id"],
                role=LegRole.SHADOW,
                engine=planned.engine,
                task_name=run.leg["task_name"],
                spec=shadow_spec(run.spec, planned.properties),
                routing={**decision.record, "experiment": planned.kind.value, "primary_leg": run.leg["id"]},
                now=now,
                # Due at once: the reconciler sends it, as soon as the primary's first send was tried.
                due_at=now,
                deadline=now + timedelta(seconds=planned.deadline_seconds),
            )
        )
    record = {**decision.record, "legs": [leg["id"] for leg in shadows]} if shadows else decision.record
    verifier = _verifier(run, decision, shadows)
    if verifier is not None:
        record = {**record, "verify": verifier}
    leg = {**run.leg, "routing": {**(run.leg["routing"] or {}), "shadow": record}}
    return replace(run, leg=leg, shadows=tuple(shadows))


def _verifier(run: NewRun, decision: ShadowDecision, shadows: list[dict[str, Any]]) -> str | None:
    """Under the `verified` answer policy, the old engine's shadow leg whose verdict the row waits for (None: the
    primary answers at once - no such leg was admitted, or the job also submits, which follows its answer)."""
    if run.plan.decision.get("answer") != AnswerPolicy.VERIFIED.value:
        return None
    test_job = run.spec.get("params", {}).get("test_job")
    if isinstance(test_job, dict) and test_job.get("submit"):
        return None
    for planned, leg in zip(decision.legs, shadows, strict=True):
        if planned.kind == ExperimentKind.SHADOW:
            return str(leg["id"])
    return None
