"""The Celery era's task API over both engines: a task is a leg (with or without a legacy result row)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from common.redact import redact_text
from gateway.api.auth import require
from gateway.api.deps import Login, State
from gateway.api.views import task_info, task_result
from gateway.engines.routing import TASK_TYPES
from gateway.jobs import tasks
from gateway.schemas import TaskInfo, TaskResult, TaskSubmission, TaskSubmitResponse
from gateway.store.models import ExecutionBackend

router = APIRouter(prefix="/tasks")


@router.post("/submit", response_model=TaskSubmitResponse)
async def submit_task(body: TaskSubmission, state: State, principal: Login) -> TaskSubmitResponse:
    require(principal, "admin")
    task_id = await tasks.submit_task(state, body.task_name, body.parameters, body.priority, body.delay)
    return TaskSubmitResponse(task_id=task_id, status="submitted", message=f"Task {body.task_name} submitted")


@router.get("/types", response_model=list[str])
async def task_types(principal: Login) -> list[str]:
    """The registry's short names, as the platform listed them; submit accepts these and the full Celery names."""
    require(principal, "admin")
    return TASK_TYPES


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
    leg, _row = await tasks.task_leg(state, task_id, refresh=True)
    return task_info(leg)


@router.get("/{task_id}/result", response_model=TaskResult)
async def task_result_view(task_id: str, state: State, principal: Login) -> TaskResult:
    require(principal, "admin")
    leg, row = await tasks.task_leg(state, task_id, refresh=True)
    return task_result(leg, row)


@router.delete("/{task_id}/cancel")
async def cancel_task(task_id: str, state: State, principal: Login) -> dict[str, str]:
    require(principal, "admin")
    await tasks.cancel_task(state, task_id)  # either run id: the answer names the id the client gave
    return {"task_id": task_id, "status": "cancelled", "message": "Task cancelled"}
