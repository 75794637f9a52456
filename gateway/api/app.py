"""The FastAPI factory. `create_app(settings)` is what `gateway serve`, `gateway up` and the tests start.

On start the schema is checked (the embedded default upgrades itself; a production database must be at head or
the process stops with a one-line hint), then the reconciler starts as a background task unless disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from common.settings import Settings, get_settings
from gateway.api import console_page
from gateway.api.csrf import CsrfKey
from gateway.api.metrics import metrics_router
from gateway.api.options import OptionsAllow
from gateway.api.routes import api_router
from gateway.api.routes.tests import add_submit_routes_first
from gateway.engines.dispatcher import Dispatcher
from gateway.jobs.bootstrap import freeze_startup_heap, start_gateway
from gateway.jobs.errors import JobError
from gateway.runtime import GatewayState
from gateway.store.db_errors import HANDLED, DbFault, classify, describe
from gateway.store.migrate import ensure_schema

# Where /docs loads Swagger UI's files from (this server, never a CDN).
DOCS_ASSETS = "/docs-assets"
log = logging.getLogger("uvicorn.error").getChild("gateway")  # shown by uvicorn's own handler
# What a 503 asks the client to wait before it sends the same request again (an outage of the database).
RETRY_AFTER_SECONDS = 5


async def _flush_skips(state: GatewayState, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=state.settings.gateway_reconcile_interval)
        try:
            await state.shadow.skips.flush(state.sessions)
        except Exception as exc:  # noqa: BLE001 - kept pending for the next round
            log.warning("flushing shadow skip counts failed: %s", exc)


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(ensure_schema, settings)
        state = start_gateway(settings, dispatcher)
        freeze_startup_heap()
        app.state.gw = state
        # The heap built so far (modules, ORM mappings, the engines' clients) lives as long as the process: out of
        # the collector's generations, so the full collections that allocation under load triggers stop walking it
        # (they were ~8 % of the submit path's CPU).
        gc.freeze()
        stop = asyncio.Event()
        task = None
        if settings.gateway_reconcile_in_api:
            task = asyncio.create_task(state.reconciler.run(stop), name="reconciler")
        else:  # the reconciler runs elsewhere; this process's skipped-shadow counts are still written
            task = asyncio.create_task(_flush_skips(state, stop), name="shadow-skips")
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=10)
            await state.close()

    # /docs with Swagger UI's assets served from the fastapi-offline package: it works with no internet. No /redoc:
    # ReDoc's page still fetches its logo from a CDN.
    app = FastAPIOffline(
        title="ctutor gateway", version="0.1.0", lifespan=lifespan, static_url=DOCS_ASSETS, redoc_url=None
    )
    add_submit_routes_first(app, ("/api", "") if settings.gateway_serve_at_root else ("/api",))
    app.include_router(api_router(), prefix="/api")
    app.include_router(metrics_router())
    app.include_router(console_page.router)
    app.state.console_csrf = CsrfKey(settings)
    if settings.gateway_serve_at_root:
        # Legacy routes only, and out of the schema (it documents each route once, under /api).
        app.include_router(api_router(legacy_only=True), include_in_schema=False)

    @app.get("/api/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(OptionsAllow)

    @app.exception_handler(JobError)
    async def _job_error(_request: Request, exc: JobError) -> JSONResponse:
        if exc.status_code == 422:
            # Every 422 in the OpenAPI spec is FastAPI's HTTPValidationError: `detail` is a list of errors.
            error = {"loc": ["body"], "msg": exc.detail, "type": "value_error"}
            return JSONResponse(status_code=422, content={"detail": [error]})
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail})

    async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
        """A database or driver error: the request's fault (400, 409), an outage (503, retry) or a bug (500)."""
        fault = classify(exc)
        if fault is DbFault.CONFLICT:
            return JSONResponse(status_code=409, content={"detail": "Conflicts with an existing record"})
        if fault is DbFault.TOO_LARGE:
            return JSONResponse(status_code=400, content={"detail": "Invalid value in the request: number too large"})
        if fault is DbFault.REFUSED_VALUE:  # the request's value, not the database, is at fault: retrying won't help
            log.info("database refused a value: %s", describe(exc))
            return JSONResponse(status_code=400, content={"detail": "Invalid value in the request"})
        if fault is DbFault.UNEXPECTED:
            log.error("unexpected error: %s", describe(exc), exc_info=exc)
            return JSONResponse(status_code=500, content={"detail": "Internal error"})
        log.warning("database unavailable: %s", describe(exc))
        return database_unavailable_response()

    for kind in HANDLED:
        app.add_exception_handler(kind, _database_error)

    return app


def database_unavailable_response() -> JSONResponse:
    """503 with Retry-After: nothing was stored, and the same request may be sent again after a pause."""
    return JSONResponse(
        status_code=503,
        content={"detail": "Database unavailable, try again"},
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
