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

This module is the order and the writes (insert, re-run, dispatch); the lookups and rules are
`gateway.jobs.submit_rules`, the new run's route and shadow legs `gateway.jobs.submit_plan`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common.legacy import ResultStatus
from gateway.engines.dispatcher import SendBy, SendStatus
from gateway.jobs.credential_binding import check_student_provider
from gateway.jobs.errors import BadJobRequest, Conflict, JobError, WorkerUnavailable
from gateway.jobs.submission_follow_up import request_submission
from gateway.jobs.submit_plan import NewRun, new_run, with_shadows
from gateway.jobs.submit_rules import (
    KEEP,
    RERUN,
    check_student_repository,
    content_for,
    count_and_existing,
    existing_run,
    member_id_for,
    member_of,
)
from gateway.legs.machine import next_attempt, reject
from gateway.runtime import GatewayState
from gateway.schemas import Role, TestCreate
from gateway.store.accounts import Principal
from gateway.store.cutover_configs import effective_config
from gateway.store.leg_writer import record_retry, record_sent
from gateway.store.models import Leg, Result, utcnow
from gateway.store.runs import insert_run


async def _dispatch(state: GatewayState, run: NewRun, row_id: str) -> str:
    """The committed run's primary leg: sent now by this request, or left to the outbox relay (woken here; on
    PostgreSQL the insert also woke every reconciler); then its shadow legs' wake-up.

    Returns the run's `test_system_id` for the answer: the engine's run id when the engine accepted the run
    before the answer (a Prefect flow run id; the row was updated to it with the leg's mark), else the
    gateway's leg id (the row adopts the engine's id once the run exists; both ids resolve everywhere)."""
    run_id = None
    if run.send_by is SendBy.HAND_OVER:
        state.reconciler.hand_over(run.leg)
    elif run.send_by is SendBy.RELAY:
        state.reconciler.wake_outbox()
    else:
        run_id = await dispatch_after_commit(state, run.leg["id"], run.plan.primary, run.spec, row_id)
    _dispatch_shadows(state, run)
    return run_id or str(run.leg["id"])


def _dispatch_shadows(state: GatewayState, run: NewRun) -> None:
    """After the primary was sent: the shadow legs are the reconciler's to send, never this process's request work.

    Here only the in-process reconciler (if it runs here) is woken; on PostgreSQL the primary's first send also
    raises a NOTIFY that wakes every reconciler (`gateway.store.outbox.OUTBOX_CHANNEL`). A shadow engine
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
    member_id = member_id_for(principal, body)
    if principal.role == Role.STUDENT:
        check_student_repository(body, state.settings.gateway_student_providers)
    content, backend = await content_for(state.sessions, state.catalog, body)
    commit = body.version_identifier
    if not commit:
        raise BadJobRequest("commit is None")
    member = await member_of(state.sessions, state.catalog, member_id)
    if principal.role == Role.STUDENT:
        check_student_provider(body.provider_url, state.settings.gateway_student_providers, member.repository_url)
    # The stage decides new jobs only: a job admitted earlier keeps its leg's engine (pinning).
    cutover = await effective_config(state.sessions, state.catalog, backend.id if backend else None, content.id)
    existing: Result | None = None
    looked = False
    if content.max_submissions is not None:
        count, existing = await count_and_existing(state.sessions, member_id, content.id, commit)
        looked = True
        # The contract's order: the limit before any look at an existing run (asking again for a run that
        # already counts is refused too once the limit is reached, as the platform refused it).
        if count >= content.max_submissions:
            raise BadJobRequest("Reached max submissions for this course_content")
    for _attempt in range(3):
        if existing is not None and ResultStatus(existing.status) in KEEP:
            return await _kept(state, existing, body), False
        try:
            run = new_run(principal, body, content, member, backend, cutover, state.send_by)
        except JobError:
            if not looked:  # the contract checks for an existing run before the backend and the repository
                looked, existing = True, await existing_run(state.sessions, member_id, content.id, commit)
                if existing is not None and ResultStatus(existing.status) in KEEP:
                    return await _kept(state, existing, body), False
            raise
        assert backend is not None  # new_run refused a missing backend
        run = await with_shadows(state.shadow, run, content, backend)
        if existing is None:
            if await insert_run(state.engine, run.row, run.leg, *run.shadows):
                run_id = await _dispatch(state, run, run.row["id"])
                return NewRow({**run.row, "test_system_id": run_id}), True
            # A run for this commit exists (an earlier one, or an identical submit that raced this one).
            looked, existing = True, await existing_run(state.sessions, member_id, content.id, commit)
            continue
        row = await _rerun(state, existing, run)
        if row is None:  # the old run changed under us: look again
            existing = await existing_run(state.sessions, member_id, content.id, commit)
            continue
        row.test_system_id = await _dispatch(state, run, row.id)  # the answer's copy (detached)
        return row, True
    raise Conflict("Conflicts with an existing record")


async def _kept(state: GatewayState, existing: Result, body: TestCreate) -> Result:
    """The same run answered again; `submit=true` on it marks it submitted and, once completed, submits it."""
    if not body.submit:
        return existing
    await request_submission(state, existing.id)
    async with state.sessions() as session:
        return await session.get(Result, existing.id) or existing


async def _rerun(state: GatewayState, existing: Result, run: NewRun) -> Result | None:
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
) -> str | None:
    """Send right away; the outbox (the leg row) is only the fallback. A missing deployment undoes the run.
    Returns the engine's run id when the engine accepted the run (None when it is left to the outbox).

    A shadow leg the engine refuses is rejected on its own: it never undoes the job."""
    outcome = await state.dispatcher.send(engine, spec, leg_id)
    now = utcnow()
    if outcome.status == SendStatus.SENT:
        await record_sent(state.engine, leg_id, outcome.engine_run_id, now, now + _deadline(state))
        return outcome.engine_run_id or leg_id
    async with state.sessions() as session, session.begin():
        if outcome.status == SendStatus.RETRY:
            await record_retry(session, leg_id, outcome.error, now, next_attempt(now, 1), fault=outcome.fault)
            return None
        if shadow:  # refused for good: the leg ends (an infra error of the shadow side), the job goes on
            leg = await session.get(Leg, leg_id)
            if leg is not None and not leg.finished:
                reject(leg, None, now, outcome.error, hooks=state.finish_hooks)
            return None
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
