"""Submitting test runs: `POST /tests` (routed by the backend's type) and the Celery era's aliases."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Response

from common.redact import redact_text
from gateway.api.auth import GuardedRoute
from gateway.api.deps import AdminOrStudent, State
from gateway.api.views import test_run_response
from gateway.jobs import results
from gateway.jobs.submit import NewRow, submit_test
from gateway.runtime import GatewayState
from gateway.schemas import TestCreate, TestRunResponse
from gateway.store.models import Result

router = APIRouter(route_class=GuardedRoute)


async def _answer(state: GatewayState, row: Result | NewRow, new: bool) -> Response:
    """A fresh run has no submission yet (no query on the hot path); a returned old row shows its own.

    Serialised here, once, by the model (pydantic's own JSON): returning the model would make FastAPI validate
    it a second time against `response_model` and encode it through `jsonable_encoder`, a sizeable share of
    the submit path's CPU for a body it already knows is valid. `response_model` still documents the answer.
    """
    run_id = await results.submission_run_id(state, row.id) if not new and row.submit else None
    return Response(test_run_response(row, run_id).model_dump_json(), media_type="application/json")


@router.post("/tests", response_model=TestRunResponse)
async def create_test(body: TestCreate, state: State, principal: AdminOrStudent) -> Response:
    row, new = await submit_test(state, principal, body)
    return await _answer(state, row, new)


@router.post("/tests-celery", response_model=TestRunResponse)
async def create_test_celery(body: TestCreate, state: State, principal: AdminOrStudent) -> Response:
    """Same body and answer as `/tests`; the course content's backend still decides where the job runs."""
    row, new = await submit_test(state, principal, body)
    return await _answer(state, row, new)


@router.get("/tests-celery/health")
async def celery_health(state: State) -> dict[str, object]:
    """Anyone may call it: answered from `state.health` (cached, one probe at a time, time-limited)."""
    health = await state.health.check("celery")
    if not health.healthy:
        return {"status": "unhealthy", "backend": "celery", "error": redact_text(health.error or "unhealthy")}
    return {"status": "healthy", "backend": "celery", "workers": health.workers, "broker_status": "connected"}


SUBMIT_ROUTES = (("/tests", create_test), ("/tests-celery", create_test_celery))


def add_submit_routes_first(app: FastAPI, prefixes: tuple[str, ...]) -> None:
    """The submit routes once more, directly on the app and before any included router (out of the schema: the
    router above documents them).

    Why: FastAPI resolves a request through included routers by walking every route of every nested router
    (its routes-version check), per request; on the deadline-day path that walk cost more than the route's own
    logic. A route at the top of the app's list is matched first, with one path comparison.
    """
    for prefix in prefixes:
        for path, endpoint in SUBMIT_ROUTES:
            app.router.add_api_route(
                prefix + path,
                endpoint,
                methods=["POST"],
                response_model=TestRunResponse,
                include_in_schema=False,
                route_class_override=GuardedRoute,
            )
