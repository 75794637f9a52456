"""Submitting test runs: `POST /tests` (routed by the backend's type) and the Celery era's aliases."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from backends.redact import redact_text
from gateway.auth import require
from gateway.routes.deps import Login, State
from gateway.schemas import TestCreate, TestRunResponse
from gateway.submit import submit_test
from gateway.views import test_run_response

router = APIRouter()


@router.post("/tests", response_model=TestRunResponse)
async def create_test(body: TestCreate, state: State, principal: Login) -> TestRunResponse:
    require(principal, "admin", "student")
    row, _new = await submit_test(state, principal, body)
    return test_run_response(row)


@router.post("/tests-celery", response_model=TestRunResponse)
async def create_test_celery(body: TestCreate, state: State, principal: Login) -> TestRunResponse:
    """Same body and answer as `/tests`; the course content's backend still decides where the job runs."""
    require(principal, "admin", "student")
    row, _new = await submit_test(state, principal, body)
    return test_run_response(row)


@router.get("/tests-celery/health")
async def celery_health(state: State) -> dict[str, object]:
    try:
        adapter = state.dispatcher.adapter("celery")
        health = await run_in_threadpool(adapter.health)
    except Exception as exc:  # noqa: BLE001 - health answers, it never fails
        return {"status": "unhealthy", "backend": "celery", "error": redact_text(f"{type(exc).__name__}: {exc}")}
    if not health.healthy:
        return {"status": "unhealthy", "backend": "celery", "error": redact_text(health.error or "unhealthy")}
    return {"status": "healthy", "backend": "celery", "workers": health.workers, "broker_status": "connected"}
