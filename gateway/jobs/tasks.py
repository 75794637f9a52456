"""The Celery era's task API over both engines: a task is a leg (with or without a legacy result row).

Submitting writes a PENDING leg and dispatches it after the commit (as `POST /api/tests` does); cancelling asks
the engine first, outside any row lock, then closes the leg through the state machine unless it ended first.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, false, func, or_, select, true
from starlette.concurrency import run_in_threadpool

from backends.interface import LegPhase, TaskKind
from backends.registry import ENGINE_ALIASES
from common.legacy import CELERY_STATE_OF, CeleryState, TaskStatus, TestJob
from common.redact import find_secret_key, redact_text, scrub
from gateway.engines.routing import task_kind, task_name_of
from gateway.jobs.errors import BadJobRequest, EngineUnreachable, NotFound
from gateway.jobs.submit import dispatch_after_commit
from gateway.jobs.submit_plan import OUTBOX_GRACE
from gateway.legs import machine
from gateway.legs.states import DispatchState, LegRole
from gateway.runtime import GatewayState
from gateway.store.leg_reads import backend_types
from gateway.store.models import Leg, Result, new_id, utcnow
from gateway.store.runs import find_leg

TASK_NOT_FOUND = "Task not found"


# The parameter each task kind needs, and the legacy model that must validate under it.
REQUIRED_PARAMETER = {TaskKind.STUDENT_TESTING: "test_job", TaskKind.SUBMISSION_PROCESSING: "submission"}


def _problems(error: ValidationError, prefix: str) -> str:
    return "; ".join(f"{prefix}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:5])


def validate_parameters(task_name: str, kind: TaskKind, parameters: dict[str, Any]) -> None:
    """Refuse, before anything is queued, a parameter set its task cannot run (a 400 that says what is missing).

    `student_testing` needs `test_job` (a `TestJob`); `submission_processing` needs `submission` holding the
    tested `test_job`. Without this a job was accepted and then failed to dispatch on every try.
    """
    name = REQUIRED_PARAMETER[kind]
    value = parameters.get(name)
    if not isinstance(value, dict):
        raise BadJobRequest(f"{task_name} needs the parameter '{name}' (an object); got {sorted(parameters) or 'none'}")
    test_job = value if kind == TaskKind.STUDENT_TESTING else value.get("test_job")
    where = name if kind == TaskKind.STUDENT_TESTING else f"{name}.test_job"
    if not isinstance(test_job, dict):
        raise BadJobRequest(f"{task_name} needs the parameter '{where}' (an object)")
    try:
        TestJob.model_validate(test_job)
    except ValidationError as exc:
        raise BadJobRequest(f"Invalid parameters for {task_name}: {_problems(exc, where)}") from None


async def submit_task(
    state: GatewayState, task_name: str, parameters: dict[str, Any], priority: int | None, delay: int | None
) -> str:
    """Queue one task on the configured tasks engine; returns its id (the leg id)."""
    kind = task_kind(task_name)
    if kind is None:
        raise BadJobRequest(f"Unknown task: {task_name}")
    secret = find_secret_key(parameters)
    if secret is not None:
        raise BadJobRequest(f"Job parameters must not carry a secret ({secret}); name a credential instead")
    validate_parameters(task_name, kind, parameters)
    parameters = cast(dict[str, Any], scrub(parameters))  # URLs lose their credentials before they are stored
    engine = state.settings.gateway_tasks_engine
    now = utcnow()
    spec = {"kind": kind.value, "params": parameters, "properties": {}, "priority": priority or 8}
    delayed = bool(delay)
    values = machine.new_leg(
        leg_id=new_id(),
        result_id=None,
        role=LegRole.PRIMARY,
        engine=engine,
        task_name=task_name_of(kind),
        spec=spec,
        routing={"rule": "gateway_tasks_engine", "engine": engine},
        now=now,
        due_at=now + (timedelta(seconds=delay or 0) if delayed else OUTBOX_GRACE),
    )
    async with state.sessions() as session, session.begin():
        session.add(Leg(**values))
    if not delayed:
        await dispatch_after_commit(state, values["id"], engine, spec, None)
    return str(values["id"])


def task_statuses(word: str) -> set[TaskStatus]:
    """The `TaskStatus`es a `?status=` word selects: one of Celery's words (what the platform's front end sends:
    `SUCCESS` selects `finished`, `PENDING` both `queued` and `deferred`, `RETRY` nothing) or a `TaskStatus`."""
    if word in set(CeleryState):
        return {status for status, celery in CELERY_STATE_OF.items() if celery == word}
    if word in set(TaskStatus):
        return {TaskStatus(word)}
    words = ", ".join([*CeleryState, *TaskStatus])
    raise BadJobRequest(f"Unknown task status {word!r}; one of {words}")


def _status_condition(statuses: set[TaskStatus]) -> ColumnElement[bool]:
    """SQL for "the leg's `TaskStatus` is one of these", the same rule as the views' `leg_task_status`: a leg not
    yet accepted by its engine is deferred (never tried) or queued; otherwise its phase decides."""
    unsent = and_(Leg.finished.is_(False), Leg.dispatch_state == DispatchState.PENDING)
    tried = func.coalesce(Leg.dispatch_attempts, 0) > 0
    conditions: list[ColumnElement[bool]] = []
    if TaskStatus.DEFERRED in statuses:
        conditions.append(and_(unsent, ~tried))
    if TaskStatus.QUEUED in statuses:
        conditions.append(and_(unsent, tried))
    phases = [phase.value for phase in LegPhase if phase.task_status() in statuses]
    if phases:
        conditions.append(and_(~unsent, Leg.phase.in_(phases)))
    return or_(*conditions) if conditions else false()


async def list_tasks(
    state: GatewayState, limit: int, offset: int, statuses: set[TaskStatus] | None = None
) -> tuple[list[Leg], int]:
    """A page of legs (every role: test runs, submissions, bare tasks), newest first, and how many there are;
    `statuses`: only legs in one of these."""
    where = _status_condition(statuses) if statuses is not None else true()
    async with state.sessions() as session:
        total = int(await session.scalar(select(func.count(Leg.id)).where(where)) or 0)
        stmt = select(Leg).where(where).order_by(Leg.created_at.desc(), Leg.id.desc()).offset(offset).limit(limit)
        legs = list((await session.execute(stmt)).scalars())
    return legs, total


async def leg_id_of(state: GatewayState, run_id: str) -> str:
    """The gateway's leg id for either run id (the leg id itself, or the engine's run id); 404 when neither."""
    async with state.sessions() as session:
        leg = await find_leg(session, run_id)
    if leg is None:
        raise NotFound(TASK_NOT_FOUND)
    return leg.id


async def task_leg(state: GatewayState, task_id: str, refresh: bool) -> tuple[Leg, Result | None]:
    """The leg (and its row) by either run id, refreshed from its engine first when asked."""
    leg_id = await leg_id_of(state, task_id)
    if refresh:
        await state.reconciler.refresh(leg_id)
    async with state.sessions() as session:
        leg = await session.get(Leg, leg_id)
        if leg is None:
            raise NotFound(TASK_NOT_FOUND)
        row = await session.get(Result, leg.result_id) if leg.result_id else None
    return leg, row


async def cancel_task(state: GatewayState, task_id: str) -> None:
    """Cancel at the engine (if it was sent), then close the leg and its row; an unreachable engine is a 503."""
    async with state.sessions() as session:
        leg = await find_leg(session, task_id)
    if leg is None:
        raise NotFound(TASK_NOT_FOUND)
    task_id = leg.id
    if not leg.finished and leg.dispatch_state == DispatchState.SENT:
        adapter = state.dispatcher.adapter(leg.engine)
        try:
            await run_in_threadpool(adapter.cancel, leg.id)
        except Exception as exc:  # noqa: BLE001 - engine unreachable: the cancel cannot be confirmed
            raise EngineUnreachable(redact_text(f"Engine unavailable, task not cancelled: {exc}")) from None
    # Serialised with the reconciler's refreshes: on SQLite a status read polling the engine meanwhile would
    # otherwise write back the CANCELLING it saw over this transaction's CANCELLED.
    async with state.reconciler.exclusive(), state.sessions() as session, session.begin():
        leg = await session.get(Leg, task_id, with_for_update=state.is_postgres)
        if leg is None or leg.finished:
            return
        row = await session.get(Result, leg.result_id) if leg.result_id else None
        machine.cancel(leg, row, utcnow(), hooks=state.finish_hooks)


async def workers_status(state: GatewayState) -> dict[str, Any]:
    """Workers and queue depths of every engine the catalog's backends name (and the tasks engine), each engine
    on its own: one that cannot be read is reported unavailable without hiding the other. No URL is shown."""
    engines: set[str] = {state.settings.gateway_tasks_engine}
    engines |= {ENGINE_ALIASES[t] for t in await backend_types(state.sessions) if t in ENGINE_ALIASES}
    answer: dict[str, Any] = {"engines": {}, "worker_list": [], "queues": {}}
    plain_queues: dict[str, int] = {}
    for engine in sorted(engines):
        try:
            adapter = state.dispatcher.adapter(engine)
            workers = await run_in_threadpool(adapter.workers)
            queues = await run_in_threadpool(adapter.queue_depths)
        except Exception as exc:  # noqa: BLE001 - one engine down must not hide the other
            answer["engines"][engine] = {"status": "unavailable", "error": redact_text(f"{type(exc).__name__}: {exc}")}
            continue
        listed = [
            {
                "name": w.name,
                "engine": engine,
                "queues": w.queues,
                "active": w.active,
                "uptime_seconds": w.uptime_seconds,
                "last_seen": w.last_seen.isoformat() if w.last_seen else None,
            }
            for w in workers
        ]
        answer["engines"][engine] = {"status": "ok", "workers": len(listed), "queues": queues}
        answer["worker_list"].extend(listed)
        for name, depth in queues.items():
            answer["queues"][f"{engine}:{name}"] = depth
            plain_queues[name] = plain_queues.get(name, 0) + depth
    return _with_platform_keys(answer, plain_queues)


def _with_platform_keys(answer: dict[str, Any], plain_queues: dict[str, int]) -> dict[str, Any]:
    """The platform's keys beside the gateway's: `status` (`connected`, or `error` when no engine answered),
    `workers` = `{"active_count", "workers": {name: worker}}` and each queue under its plain name too (summed
    over the engines that have one by that name) next to its `engine:name` key."""
    reachable = any(e["status"] == "ok" for e in answer["engines"].values())
    answer["status"] = "connected" if reachable else "error"
    if not reachable:
        answer["error"] = "; ".join(f"{name}: {e.get('error')}" for name, e in sorted(answer["engines"].items()))
    workers = answer["worker_list"]
    answer["workers"] = {"active_count": len(workers), "workers": {w["name"]: w for w in workers}}
    answer["queues"] = {**plain_queues, **answer["queues"]}
    return answer
