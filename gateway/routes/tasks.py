"""The Celery era's task API over both engines: a task is a leg (with or without a legacy result row)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from backends.interface import LegPhase
from backends.redact import redact_text
from gateway.auth import require
from gateway.dispatch import TASK_NAMES, task_kind, task_name_of
from gateway.legs import finish
from gateway.routes.deps import Login, State
from gateway.schemas import TaskInfo, TaskResult, TaskSubmission, TaskSubmitResponse
from gateway.state import GatewayState
from gateway.store.models import ExecutionBackend, Leg, Result, new_id, utcnow
from gateway.submit import OUTBOX_GRACE, dispatch_after_commit
from gateway.views import task_info, task_result

router = APIRouter(prefix="/tasks")


def _unknown_task() -> HTTPException:
    return HTTPException(status_code=404, detail="Task not found")


def _has_token(value: Any) -> bool:
    """Secrets never travel in job parameters: a non-empty `token` anywhere in them is refused."""
    if isinstance(value, dict):
        return any((k == "token" and v) or _has_token(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_token(v) for v in value)
    return False


async def _leg(state: GatewayState, task_id: str, refresh: bool) -> tuple[Leg, Result | None]:
    if refresh:
        await state.reconciler.refresh(task_id)
    async with state.sessions() as session:
        leg = await session.get(Leg, task_id)
        if leg is None:
            raise _unknown_task()
        row = await session.get(Result, leg.result_id) if leg.result_id else None
    return leg, row


@router.post("/submit", response_model=TaskSubmitResponse)
async def submit_task(body: TaskSubmission, state: State, principal: Login) -> TaskSubmitResponse:
    require(principal, "admin")
    kind = task_kind(body.task_name)
    if kind is None:
        raise HTTPException(status_code=400, detail=f"Unknown task: {body.task_name}")
    if _has_token(body.parameters):
        raise HTTPException(status_code=400, detail="Job parameters must not carry a token; name a credential")
    engine = state.settings.gateway_tasks_engine
    now = utcnow()
    leg_id = new_id()
    spec = {"kind": kind.value, "params": body.parameters, "properties": {}, "priority": body.priority or 8}
    delayed = bool(body.delay)
    leg = Leg(
        id=leg_id,
        result_id=None,
        role="primary",
        engine=engine,
        task_name=task_name_of(kind),
        spec=spec,
        routing={"rule": "gateway_tasks_engine", "engine": engine},
        phase="queued",
        dispatch_state="pending",
        dispatch_attempts=0,
        next_attempt_at=now + (timedelta(seconds=body.delay or 0) if delayed else OUTBOX_GRACE),
        created_at=now,
        updated_at=now,
    )
    async with state.sessions() as session, session.begin():
        session.add(leg)
    if not delayed:
        await dispatch_after_commit(state, leg_id, engine, spec, None)
    return TaskSubmitResponse(task_id=leg_id, status="submitted", message=f"Task {body.task_name} submitted")


@router.get("/types", response_model=list[str])
async def task_types(principal: Login) -> list[str]:
    require(principal, "admin")
    return sorted(TASK_NAMES)


@router.get("/workers/status")
async def workers_status(state: State, principal: Login) -> dict[str, Any]:
    """Declared before `/{task_id}/status` (**fix**: the old router shadowed it). No URL is ever shown."""
    require(principal, "admin")
    async with state.sessions() as session:
        types = set((await session.execute(select(ExecutionBackend.type).distinct())).scalars().all())
    engines: set[str] = {state.settings.gateway_tasks_engine}
    for t in types:
        if t in ("celery", "prefect", "prefect_builtin"):
            engines.add("prefect" if t == "prefect_builtin" else t)
    answer: dict[str, Any] = {"engines": {}, "workers": [], "queues": {}}
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
        answer["workers"].extend(listed)
        for name, depth in queues.items():
            answer["queues"][f"{engine}:{name}"] = depth
    return answer


@router.get("/{task_id}/status", response_model=TaskInfo)
async def task_status(task_id: str, state: State, principal: Login) -> TaskInfo:
    require(principal, "admin")
    leg, _row = await _leg(state, task_id, refresh=True)
    return task_info(leg)


@router.get("/{task_id}/result", response_model=TaskResult)
async def task_result_view(task_id: str, state: State, principal: Login) -> TaskResult:
    require(principal, "admin")
    leg, row = await _leg(state, task_id, refresh=True)
    return task_result(leg, row)


@router.delete("/{task_id}/cancel")
async def cancel_task(task_id: str, state: State, principal: Login) -> dict[str, str]:
    require(principal, "admin")
    async with state.sessions() as session, session.begin():
        leg = await session.get(Leg, task_id, with_for_update=state.is_postgres)
        if leg is None:
            raise _unknown_task()
        row = await session.get(Result, leg.result_id) if leg.result_id else None
        if not leg.finished:
            if leg.dispatch_state != "sent":
                leg.dispatch_state = "failed"  # never sent: nothing to tell the engine
            else:
                adapter = state.dispatcher.adapter(leg.engine)
                try:
                    await run_in_threadpool(adapter.cancel, leg.id)
                except Exception as exc:  # noqa: BLE001 - engine unreachable: the cancel cannot be confirmed
                    raise HTTPException(
                        status_code=503, detail=redact_text(f"Engine unavailable, task not cancelled: {exc}")
                    ) from None
            finish(leg, row, utcnow(), LegPhase.CANCELLED)
    return {"task_id": task_id, "status": "cancelled", "message": "Task cancelled"}
