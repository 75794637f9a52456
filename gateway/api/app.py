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

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from common.redact import redact_text
from common.settings import Settings, get_settings
from gateway.api import scorecard_page
from gateway.api.metrics import metrics_router
from gateway.api.options import OptionsAllow
from gateway.api.routes import api_router
from gateway.api.routes.tests import add_submit_routes_first
from gateway.engines.dispatcher import Dispatcher
from gateway.jobs.bootstrap import freeze_startup_heap, start_gateway
from gateway.jobs.errors import JobError
from gateway.runtime import GatewayState
from gateway.store.db import database_unavailable
from gateway.store.migrate import ensure_schema

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

    app = FastAPI(title="ctutor gateway", version="0.1.0", lifespan=lifespan)
    add_submit_routes_first(app, ("/api", "") if settings.gateway_serve_at_root else ("/api",))
    app.include_router(api_router(), prefix="/api")
    app.include_router(metrics_router())
    app.include_router(scorecard_page.router)
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

    @app.exception_handler(IntegrityError)
    async def _conflict(_request: Request, exc: IntegrityError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": "Conflicts with an existing record"})

    @app.exception_handler(OverflowError)
    async def _too_large(_request: Request, exc: OverflowError) -> JSONResponse:
        # SQLite's driver refuses integers beyond 64 bits outside the DBAPI error tree (e.g. ?skip=2**70).
        return JSONResponse(status_code=400, content={"detail": "Invalid value in the request: number too large"})

    @app.exception_handler(DBAPIError)
    async def _database_down(_request: Request, exc: DBAPIError) -> JSONResponse:
        if _refused_value(exc):
            # The database refused a value from the request (a NUL byte, an integer out of range): the
            # client's error, and retrying will not help, so not a 503.
            log.info("database refused a value: %s", redact_text(f"{type(exc.orig).__name__}: {exc.orig}"))
            return JSONResponse(status_code=400, content={"detail": "Invalid value in the request"})
        log.warning("database error: %s", redact_text(f"{type(exc.orig).__name__}: {exc.orig}"))
        return database_unavailable_response()

    async def _unreachable(_request: Request, exc: Exception) -> JSONResponse:
        """A driver error that escaped SQLAlchemy's wrapping (a refused connection is a bare OSError), or one
        from a statement run on the driver's connection directly (the submit path's, `gateway.store.driver`)."""
        if _refused_value(exc):  # as for a wrapped one: the request's value, not the database, is at fault
            log.info("database refused a value: %s", redact_text(f"{type(exc).__name__}: {exc}"))
            return JSONResponse(status_code=400, content={"detail": "Invalid value in the request"})
        if not database_unavailable(exc):
            log.error("unexpected error: %s", redact_text(f"{type(exc).__name__}: {exc}"), exc_info=exc)
            return JSONResponse(status_code=500, content={"detail": "Internal error"})
        log.warning("database unreachable: %s", redact_text(f"{type(exc).__name__}: {exc}"))
        return database_unavailable_response()

    for kind in (OSError, SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError):
        app.add_exception_handler(kind, _unreachable)

    return app


def database_unavailable_response() -> JSONResponse:
    """503 with Retry-After: nothing was stored, and the same request may be sent again after a pause."""
    return JSONResponse(
        status_code=503,
        content={"detail": "Database unavailable, try again"},
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _refused_value(exc: BaseException) -> bool:
    """A data exception (SQLSTATE class 22) or a driver's refusal to encode a value, anywhere in the chain.

    asyncpg's adapter raises a generic DBAPI `Error` for both; the cause is asyncpg's DataError (a ValueError)
    or a server error whose sqlstate starts with 22; psycopg2 raises DataError with such a pgcode.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DataError | ValueError | OverflowError):
            return True
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str) and code.startswith("22"):
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False
