"""Reading and writing legacy result rows: visibility, a fresh status for in-flight rows, the write-back.

A student sees only their own rows (someone else's answers 404, so existence does not leak). A status read of
an in-flight row polls its leg first, so a client sees completion as soon as the engine knows it. The
write-back is the legacy path of a flow the gateway did not write: it updates the row and moves the leg to
match through the leg state machine (so the same follow-ups run as when the reconciler closes a leg).

A worker account exists for that write-back alone, so it reaches only runs that are open on an engine, and
only while they are: it finds a row by its run id (the one a flow was given), sees nothing of a closed or
unknown run, and a PATCH of a row whose leg has finished, or of an unknown id, is 403 (but for the merge
request's note, `merge_request_note`). Admins are not scoped.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from backends.interface import LegPhase
from common.legacy import ResultStatus, status_name
from common.scoring import score
from gateway.jobs.errors import NotAllowed, NotFound
from gateway.legs import machine
from gateway.legs.states import DispatchState, LegRole
from gateway.runtime import GatewayState
from gateway.schemas import Role
from gateway.store.accounts import Principal
from gateway.store.leg_reads import newest_run_id
from gateway.store.models import Leg, Result, utcnow
from gateway.store.result_list import ResultFilter, result_page
from gateway.store.runs import find_leg, row_leg

RESULT_NOT_FOUND = "Result not found"
RUN_NOT_FOUND = "Test run not found"
WRITABLE = ("result", "result_json", "properties")


async def list_results(
    state: GatewayState, principal: Principal, query: ResultFilter, skip: int, limit: int
) -> tuple[int, list[Result]]:
    """The total and one page, newest first; a student sees only their own rows.

    A lookup by run id that finds no row may be a shadow run's (a flow the gateway did not write, knowing only
    its run id and its job's ids): answered with the shadow leg's view (`shadow_lookup`) when that view passes
    the other filters given too."""
    worker = principal.role == Role.WORKER
    if worker and query.test_system_id is None:
        raise NotAllowed()  # a worker looks up the run it was given; it never browses the rows
    own = principal.course_member_ids if principal.role == Role.STUDENT else None
    total, rows = await result_page(state.sessions, query, own, skip, limit, LegRole.PRIMARY, open_runs_only=worker)
    if not total and query.by_run_id() and own is None:
        assert query.test_system_id is not None
        shadow = await shadow_lookup(state, principal, query.test_system_id)
        if shadow is not None and query.admits(shadow):
            return 1, [shadow] if skip == 0 else []
    return total, rows


async def submission_run_id(state: GatewayState, result_id: str) -> str | None:
    """The run id of the newest submission-processing leg a `submit=true` row started, if any: the engine's
    (a Prefect flow run id) once it has one, else the gateway's leg id (both resolve everywhere)."""
    return await newest_run_id(state.sessions, result_id, LegRole.SUBMISSION)


async def visible_row(state: GatewayState, principal: Principal, result_id: str) -> Result:
    """The row, or 404 both when it does not exist and when it is someone else's."""
    async with state.sessions() as session:
        row = await session.get(Result, result_id)
    if row is None or not principal.may_see_member(row.course_member_id):
        raise NotFound(RESULT_NOT_FOUND)
    return row


async def fresh_visible_row(state: GatewayState, principal: Principal, result_id: str) -> Result:
    """`visible_row`, refreshed from its engine while in flight."""
    return await refreshed(state, await visible_row(state, principal, result_id))


async def refreshed(state: GatewayState, row: Result) -> Result:
    """An in-flight row is refreshed from its engine first."""
    if machine.row_is_final(row) or not row.test_system_id:
        return row
    async with state.sessions() as session:  # the run id may be the engine's (a flow run id): the leg's own id
        leg = await row_leg(session, row)
    await state.reconciler.refresh(leg.id if leg is not None else row.test_system_id)
    async with state.sessions() as session:
        fresh = await session.get(Result, row.id)
    return fresh or row


async def write_back(state: GatewayState, principal: Principal, result_id: str, changes: dict[str, Any]) -> Result:
    """Apply a legacy worker's PATCH to the row, and to its primary leg when it carries a status.

    The id of a shadow leg (what `shadow_view` answered a shadow run's lookup with) writes to that leg only."""
    worker = principal.role == Role.WORKER
    # The same discipline as a cancel: serialised with refreshes on SQLite; on PostgreSQL the leg is locked first
    # (the reconciler's lock order), so a refresh cannot write a stale status over this one.
    async with state.reconciler.exclusive(), state.sessions() as session, session.begin():
        row = await session.get(Result, result_id)
        if row is None:
            shadow = await session.get(Leg, result_id, with_for_update=state.is_postgres)
            if shadow is None or shadow.role != LegRole.SHADOW or shadow.result_id is None:
                raise NotAllowed() if worker else NotFound(RESULT_NOT_FOUND)
            if worker and shadow.finished:
                raise NotAllowed()
            status = changes.get("status")
            report = changes.get("result_json")
            machine.apply_shadow_write_back(
                shadow, int(status) if status is not None else None, report, utcnow(), hooks=state.finish_hooks
            )
            job = await session.get(Result, shadow.result_id)
            assert job is not None
            return shadow_view(job, shadow)
        leg = await row_leg(session, row, lock=state.is_postgres)
        if worker and (leg is None or leg.finished) and not merge_request_note(principal, row, changes):
            raise NotAllowed()  # checked under the leg's lock: the run cannot close between check and write
        if state.is_postgres:
            row = await session.get(Result, result_id, with_for_update=True, populate_existing=True) or row
        for name in WRITABLE:
            if name in changes:
                setattr(row, name, changes[name])
        if changes.get("submit") is not None:
            # Only records what the worker did (its merge request): a submission it made itself is not
            # started again by the gateway.
            row.submit = bool(changes["submit"])
        status = changes.get("status")
        if status is not None:
            row.status = int(status)
        row.updated_by = principal.user_id
        row.updated_at = utcnow()
        if leg is not None and status is not None:
            machine.apply_write_back(leg, row, int(status), utcnow(), hooks=state.finish_hooks)
    return row


def merge_request_note(principal: Principal, row: Result, changes: dict[str, Any]) -> bool:
    """The one write a worker may make after its run closed: the platform's flow writes its verdict (closing the
    run), opens the merge request, then records it with `{"submit": true}`. Only that flag, only set, and only
    on a row whose last write was this worker's own verdict."""
    return changes == {"submit": True} and row.updated_by == principal.user_id


def shadow_view(row: Result, leg: Leg) -> Result:
    """What a shadow run sees of its job (a detached copy): the job's row under the shadow leg's id, with the
    leg's own status and report. Writing back to that id lands on the leg (`write_back`), never on the row."""
    phase = LegPhase(leg.phase)
    report = leg.payload if isinstance(leg.payload, dict) else None
    status = phase.result_status() if phase != LegPhase.MISSING else ResultStatus.SCHEDULED
    values = {c.key: getattr(row, c.key) for c in Result.__table__.columns}
    values |= {"id": leg.id, "test_system_id": leg.id, "status": int(status), "submit": False}
    values |= {"result": score(report), "result_json": report}
    return Result(**values)


async def shadow_lookup(state: GatewayState, principal: Principal, test_system_id: str) -> Result | None:
    """A flow the gateway did not write looks its job up by its own run id; for a shadow run that is a shadow
    leg (by leg id or the engine's run id): answered with `shadow_view`, for workers and admins only."""
    if not (principal.is_admin or principal.role == Role.WORKER):
        return None
    async with state.sessions() as session:
        stmt = select(Leg).where(
            Leg.role == LegRole.SHADOW, or_(Leg.id == test_system_id, Leg.engine_run_id == test_system_id)
        )
        leg = (await session.execute(stmt.limit(1))).scalar_one_or_none()
        row = await session.get(Result, leg.result_id) if leg is not None and leg.result_id else None
    if leg is None or row is None or (principal.role == Role.WORKER and leg.finished):
        return None
    return shadow_view(row, leg)


async def system_status(state: GatewayState, principal: Principal, test_system_id: str) -> dict[str, str]:
    """The legacy `{"status": NAME}` of a run by its test system id (admins also see row-less legs)."""
    async with state.sessions() as session:
        leg = await find_leg(session, test_system_id)  # the gateway's id or the engine's run id
        if leg is not None:
            test_system_id = leg.id
        run_ids = {test_system_id} | ({leg.engine_run_id} if leg is not None and leg.engine_run_id else set())
        row = (
            await session.execute(select(Result).where(Result.test_system_id.in_(sorted(run_ids))))
        ).scalar_one_or_none()
    if row is None:
        if leg is None or not principal.is_admin:
            raise NotFound(RUN_NOT_FOUND)
        if not leg.finished:
            await state.reconciler.refresh(leg.id)
            async with state.sessions() as session:
                leg = await session.get(Leg, leg.id) or leg
        return {"status": LegPhase(leg.phase).result_status().name}
    if not principal.may_see_member(row.course_member_id):
        raise NotFound(RUN_NOT_FOUND)
    row = await refreshed(state, row)
    answer = {"status": status_name(row.status)}
    if leg is not None and leg.dispatch_state == DispatchState.PENDING and leg.last_error:
        # The engine's error names internal hosts and URLs: only admins see it; students get a neutral line.
        detail = f": {leg.last_error}" if principal.is_admin else ""
        answer["message"] = f"waiting for the engine to accept the job{detail}"
    return answer
