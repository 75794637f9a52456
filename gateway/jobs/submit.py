"""`POST /api/tests`: resolve the course content, apply the legacy rules, commit the row and its leg, dispatch.

The order of the checks is the contract's: content, commit, max submissions, an existing run for the same
(member, content, commit), backend type. The row and its primary leg are committed *before* dispatch with a
gateway-chosen leg id (the row's `test_system_id`), in one statement.

Who sends the leg depends on its engine (`GatewayState.send_by`). An engine that may refuse the job at its send
(Prefect: a missing deployment is the contract's 404) is sent by the request right after the commit; an
unreachable engine leaves the leg in the outbox for the reconciler (the client still gets its 200 with status 3).
An engine that takes whatever it is sent (Celery) is not contacted by the request at all: the leg is committed
due at once and the outbox relay (the reconciler, woken by the commit) sends it; when that relay runs in this
process, the leg is committed under its lease and handed to it, so it needs no claim. The answer is the same either
way; what the request saves is the send's CPU, most of the submit path's cost under load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, delete, func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backends.interface import TaskKind
from common.legacy import Repository, ResultStatus, TestJob
from common.redact import strip_credentials
from gateway.cutover.stages import CutoverConfig
from gateway.engines.dispatcher import SendBy, SendStatus
from gateway.engines.reconciler import OUTBOX_LEASE
from gateway.engines.routing import RoutePlan, UnsupportedBackend, plan_route, task_name_of
from gateway.jobs.errors import BadJobRequest, Conflict, JobError, NotAllowed, NotFound, WorkerUnavailable
from gateway.jobs.submission_follow_up import request_submission
from gateway.legs.machine import new_leg, record_retry, record_sent, reject
from gateway.legs.states import LegRole
from gateway.runtime import GatewayState
from gateway.schemas import TestCreate
from gateway.store.accounts import Principal, Role
from gateway.store.cutover_configs import effective_config
from gateway.store.models import CourseContent, CourseMember, ExecutionBackend, Leg, Result, new_id, utcnow
from gateway.store.runs import insert_run

KEEP = {
    ResultStatus.SCHEDULED,
    ResultStatus.PENDING,
    ResultStatus.RUNNING,
    ResultStatus.PAUSED,
    ResultStatus.COMPLETED,
}
RERUN = {
    ResultStatus.FAILED,
    ResultStatus.CRASHED,
    ResultStatus.CANCELLING,
    ResultStatus.CANCELLED,
    ResultStatus.NOT_AVAILABLE,
}
# A fresh leg belongs to its request for this long; the reconciler must not race it for the first send.
OUTBOX_GRACE = timedelta(seconds=15)
# When a new primary leg is due in the outbox, by who sends it: the request right after its commit (the outbox
# takes over after a grace, if that did not happen), a relay woken by the commit (at once), or this process's
# relay, handed the leg (its lease: any reconciler takes over only if this process stopped before the send).
DUE_AFTER = {SendBy.REQUEST: OUTBOX_GRACE, SendBy.RELAY: timedelta(0), SendBy.HAND_OVER: OUTBOX_LEASE}
# The legacy task name of a test run, looked up once (not per request).
STUDENT_TESTING_TASK = task_name_of(TaskKind.STUDENT_TESTING)
# Runs that broke do not count against the maximum: the student did not get a verdict from them.
NOT_COUNTED = [int(s) for s in (ResultStatus.FAILED, ResultStatus.CANCELLED, ResultStatus.CRASHED)]


async def _content(state: GatewayState, body: TestCreate) -> tuple[CourseContent, ExecutionBackend | None]:
    if body.course_content_id:
        by, value = "id", body.course_content_id
    elif body.course_content_path:
        by, value = "path", body.course_content_path
    elif body.directory:
        by, value = "directory", body.directory
    else:
        raise NotFound("Course content not found: give course_content_id, course_content_path or directory")
    cache_key = ("content", by, value)
    pair: tuple[CourseContent, ExecutionBackend | None] | None = state.catalog.get(cache_key)
    if pair is None:
        # Built only on a miss: an SQL expression costs more than the cache hit it would be wasted on.
        stmt = select(CourseContent, ExecutionBackend).outerjoin(
            ExecutionBackend, ExecutionBackend.id == CourseContent.execution_backend_id
        )
        column = getattr(CourseContent, by) == value
        async with state.sessions() as session:
            found = (await session.execute(stmt.where(column).limit(2))).all()
        if not found:
            raise NotFound("Course content not found")
        if len(found) > 1:
            raise BadJobRequest("More than one course content has this directory; give course_content_id")
        pair = (found[0][0], found[0][1])
        state.catalog.put(cache_key, pair)
    content, backend = pair
    if content.kind != "assignment":
        raise NotFound("Course content is not an assignment")
    return content, backend


async def _member(state: GatewayState, member_id: str) -> CourseMember:
    member: CourseMember | None = state.catalog.get(("member", member_id))
    if member is None:
        async with state.sessions() as session:
            member = await session.get(CourseMember, member_id)
        if member is None:
            raise NotFound("Course member not found")
        state.catalog.put(("member", member_id), member)
    return member


def _member_id(principal: Principal, body: TestCreate) -> str:
    """The member the run is for: a student's own membership (the body's id only picks among them)."""
    if principal.is_admin:
        if not body.course_member_id:
            raise BadJobRequest("course_member_id is required when an admin submits")
        return body.course_member_id
    if principal.role != Role.STUDENT or not principal.course_member_ids:
        raise NotAllowed()
    if body.course_member_id:
        if body.course_member_id not in principal.course_member_ids:
            raise NotAllowed()
        return body.course_member_id
    return sorted(principal.course_member_ids)[0]


PROVIDER_SCHEMES = ("https", "http", "ssh")


def check_student_repository(body: TestCreate, allowed_hosts: list[str]) -> None:
    """A student may point at a repository provider, never at a path on the worker (`file:///`, `project: "/"`)."""
    if not (body.provider_url or body.project):
        return
    parts = urlsplit(body.provider_url or "")
    if parts.scheme.lower() not in PROVIDER_SCHEMES or not parts.hostname:
        raise BadJobRequest("provider_url must be a repository provider URL (https or ssh)")
    if allowed_hosts and parts.hostname.lower() not in {h.lower() for h in allowed_hosts}:
        raise BadJobRequest("provider_url is not one of the configured repository providers")
    project = (body.project or "").strip()
    if not project.strip("/") or project.startswith("/") or ".." in project.split("/") or "\\" in project:
        raise BadJobRequest("project must be a repository path on the provider, e.g. group/name")


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
            url=strip_credentials(content.reference_url),
            commit=content.reference_commit,
            path=content.directory,
            credential=content.reference_credential,
        )
    return TestJob(
        user_id=member.user_id,
        course_member_id=member.id,
        course_content_id=content.id,
        execution_backend_id=backend.id,
        module=Repository(url=url, commit=commit, path=content.directory, credential=member.credential),
        reference=reference,
    )


def _run_match(member_id: str, content_id: str, commit: str) -> Any:
    return and_(
        Result.course_member_id == member_id,
        Result.course_content_id == content_id,
        Result.version_identifier == commit,
    )


async def _existing(state: GatewayState, member_id: str, content_id: str, commit: str) -> Result | None:
    async with state.sessions() as session:
        return (await session.execute(select(Result).where(_run_match(member_id, content_id, commit)))).scalar()


async def _count_and_existing(
    state: GatewayState, member_id: str, content_id: str, commit: str
) -> tuple[int, Result | None]:
    """The counted submissions and the run for this commit (if any), in one round trip."""
    counted = (
        select(func.count(Result.id))
        .where(
            Result.course_member_id == member_id,
            Result.course_content_id == content_id,
            Result.submit.is_(True),
            Result.status.not_in(NOT_COUNTED),
        )
        .scalar_subquery()
    )
    one = select(literal(1).label("one")).subquery()
    stmt = (
        select(counted.label("counted"), Result)
        .select_from(one)
        .outerjoin(Result, _run_match(member_id, content_id, commit))
    )
    async with state.sessions() as session:
        count, existing = (await session.execute(stmt)).one()
    return int(count or 0), existing


@dataclass(frozen=True)
class _Run:
    """A new run ready to insert: the row's and the legs' column values, and what dispatch needs."""

    row: dict[str, Any]
    leg: dict[str, Any]
    plan: RoutePlan
    spec: dict[str, Any]
    # Shadow legs (column values), written with the row and dispatched after the primary, off the request.
    shadows: tuple[dict[str, Any], ...] = ()
    # Who sends the primary leg (`GatewayState.send_by`): this request, or the outbox relay.
    send_by: SendBy = SendBy.REQUEST


def _new_run(
    principal: Principal,
    body: TestCreate,
    content: CourseContent,
    member: CourseMember,
    backend: ExecutionBackend | None,
    cutover: CutoverConfig | None = None,
    send_by: Callable[[str], SendBy] = lambda _engine: SendBy.REQUEST,
) -> _Run:
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
    return _Run(row=row, leg=leg, plan=plan, spec=spec, send_by=sender)


def shadow_spec(spec: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    """The primary's job as a shadow runs it: `submit` false, marked `shadow`, the setting's properties laid over."""
    params = dict(spec["params"])
    if isinstance(params.get("test_job"), dict):
        params["test_job"] = {**params["test_job"], "submit": False}
    return {**spec, "params": params, "properties": {**(spec.get("properties") or {}), **properties}, "shadow": True}


async def _with_shadows(state: GatewayState, run: _Run, content: CourseContent, backend: ExecutionBackend) -> _Run:
    """Ask the shadow policy; add the legs it wants and record its decision on the primary leg."""
    # Under a cutover stage the stage names the shadow engine and fraction (None: the stage shadows nothing).
    staged = (run.plan.shadow, run.plan.shadow_fraction) if "stage" in run.plan.decision else None
    decision = await state.shadow.decide(run.plan.primary, backend.id, content.id, staged)
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
    leg = {**run.leg, "routing": {**(run.leg["routing"] or {}), "shadow": record}}
    return replace(run, leg=leg, shadows=tuple(shadows))


async def _dispatch(state: GatewayState, run: _Run, row_id: str) -> None:
    """The committed run's primary leg: sent now by this request, or left to the outbox relay (woken here; on
    PostgreSQL the insert also woke every reconciler); then its shadow legs' wake-up."""
    if run.send_by is SendBy.HAND_OVER:
        state.reconciler.hand_over(run.leg)
    elif run.send_by is SendBy.RELAY:
        state.reconciler.wake_outbox()
    else:
        await dispatch_after_commit(state, run.leg["id"], run.plan.primary, run.spec, row_id)
    _dispatch_shadows(state, run)


def _dispatch_shadows(state: GatewayState, run: _Run) -> None:
    """After the primary was sent: the shadow legs are the reconciler's to send, never this process's request work.

    Here only the in-process reconciler (if it runs here) is woken; on PostgreSQL the primary's first send also
    raises a NOTIFY that wakes every reconciler (`gateway.engines.reconciler.OUTBOX_CHANNEL`). A shadow engine
    that is down only leaves its leg in the outbox (retried, then timed out at its deadline)."""
    if run.shadows:
        state.reconciler.wake_outbox()


class NewRow:
    """A freshly inserted run's column values as attributes, read like a `Result` by the answer and callers.

    Why not `Result(**values)`: the ORM's instrumented constructor costs more than the rest of building the run,
    for an object no session will ever see."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


async def submit_test(state: GatewayState, principal: Principal, body: TestCreate) -> tuple[Result | NewRow, bool]:
    """Returns the row to answer with and whether it is new; raises `JobError`s with the legacy texts.

    The common case (a new commit) costs one statement before dispatch: the run is inserted optimistically
    and an existing run for the same commit shows up as a conflict, after which the re-submission rules apply
    to it. The catalog comes from the cache; the max-submission count, when the content has a maximum, shares
    one query with the existing-run lookup.
    """
    member_id = _member_id(principal, body)
    if principal.role == Role.STUDENT:
        check_student_repository(body, state.settings.gateway_student_providers)
    content, backend = await _content(state, body)
    commit = body.version_identifier
    if not commit:
        raise BadJobRequest("commit is None")
    member = await _member(state, member_id)
    # The stage decides new jobs only: a job admitted earlier keeps its leg's engine (pinning).
    cutover = await effective_config(state.sessions, state.catalog, backend.id if backend else None, content.id)
    existing: Result | None = None
    looked = False
    if content.max_submissions is not None:
        count, existing = await _count_and_existing(state, member_id, content.id, commit)
        looked = True
        # Asking again for a run that already counts is idempotent, not one submission too many.
        if count >= content.max_submissions and not _counted_already(existing):
            raise BadJobRequest("Reached max submissions for this course_content")
    for _attempt in range(3):
        if existing is not None and ResultStatus(existing.status) in KEEP:
            return await _kept(state, existing, body), False
        try:
            run = _new_run(principal, body, content, member, backend, cutover, state.send_by)
        except JobError:
            if not looked:  # the contract checks for an existing run before the backend and the repository
                looked, existing = True, await _existing(state, member_id, content.id, commit)
                if existing is not None and ResultStatus(existing.status) in KEEP:
                    return await _kept(state, existing, body), False
            raise
        assert backend is not None  # _new_run refused a missing backend
        run = await _with_shadows(state, run, content, backend)
        if existing is None:
            if await insert_run(state.engine, run.row, run.leg, *run.shadows):
                await _dispatch(state, run, run.row["id"])
                return NewRow(run.row), True
            # A run for this commit exists (an earlier one, or an identical submit that raced this one).
            looked, existing = True, await _existing(state, member_id, content.id, commit)
            continue
        row = await _rerun(state, existing, run)
        if row is None:  # the old run changed under us: look again
            existing = await _existing(state, member_id, content.id, commit)
            continue
        await _dispatch(state, run, row.id)
        return row, True
    raise Conflict("Conflicts with an existing record")


def _counted_already(existing: Result | None) -> bool:
    return existing is not None and bool(existing.submit) and ResultStatus(existing.status) in KEEP


async def _kept(state: GatewayState, existing: Result, body: TestCreate) -> Result:
    """The same run answered again; `submit=true` on it marks it submitted and, once completed, submits it."""
    if not body.submit:
        return existing
    await request_submission(state, existing.id)
    async with state.sessions() as session:
        return await session.get(Result, existing.id) or existing


async def _rerun(state: GatewayState, existing: Result, run: _Run) -> Result | None:
    """Re-run a broken run: rename the old row and insert the new run in one transaction (None on a race)."""
    async with state.sessions() as session:
        old = await session.get(Result, existing.id)
        if old is None or ResultStatus(old.status) not in RERUN:
            return None
        await _rename(session, old, run.row["version_identifier"])
        row = Result(**run.row)
        session.add(row)
        await session.flush()  # the row before its leg (foreign key), in one transaction
        session.add_all([Leg(**values) for values in (run.leg, *run.shadows)])
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            return None
    return row


async def _rename(session: AsyncSession, existing: Result, commit: str) -> None:
    """`<commit>:<status>`; **fix**: a second rename to a taken name gets `:<n>` instead of a unique violation."""
    base = f"{commit}:{existing.status}"
    taken = await session.scalar(
        select(func.count(Result.id)).where(
            Result.course_member_id == existing.course_member_id,
            Result.course_content_id == existing.course_content_id,
            Result.version_identifier.startswith(base, autoescape=True),
        )
    )
    existing.version_identifier = base if not taken else f"{base}:{taken}"
    await session.flush()


async def dispatch_after_commit(
    state: GatewayState,
    leg_id: str,
    engine: str,
    spec: dict[str, Any],
    row_id: str | None,
    *,
    shadow: bool = False,
) -> None:
    """Send right away; the outbox (the leg row) is only the fallback. A missing deployment undoes the run.

    A shadow leg the engine refuses is rejected on its own: it never undoes the job."""
    outcome = await state.dispatcher.send(engine, spec, leg_id)
    now = utcnow()
    if outcome.status == SendStatus.SENT:
        await record_sent(state.engine, leg_id, outcome.engine_run_id, now, now + _deadline(state))
        return
    async with state.sessions() as session, session.begin():
        if outcome.status == SendStatus.RETRY:
            await record_retry(session, leg_id, outcome.error, now, fault=outcome.fault)
            return
        if shadow:  # refused for good: the leg ends (an infra error of the shadow side), the job goes on
            leg = await session.get(Leg, leg_id)
            if leg is not None and not leg.finished:
                reject(leg, None, now, outcome.error)
            return
        # Rejected by configuration: the client gets an error, so no run may remain behind it.
        if row_id is not None:
            await session.execute(delete(Leg).where(Leg.result_id == row_id))
            await session.execute(delete(Result).where(Result.id == row_id))
        else:
            await session.execute(delete(Leg).where(Leg.id == leg_id))
    if outcome.deployment is not None:
        raise WorkerUnavailable(outcome.deployment)
    raise BadJobRequest(outcome.error or "execution backend rejected the job")


def _deadline(state: GatewayState) -> timedelta:
    return timedelta(seconds=state.settings.gateway_leg_deadline_seconds)
