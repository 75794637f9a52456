"""The FastAPI factory. `create_app(settings)` is what `gateway serve`, `gateway up` and the tests start.

On start the schema is checked (the embedded default upgrades itself; a production database must be at head or
the process stops with a one-line hint), then the reconciler starts as a background task unless disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from starlette.concurrency import run_in_threadpool

from common.redact import redact_text
from common.settings import Settings, get_settings
from gateway.api import scorecard_page
from gateway.api.routes import api_router
from gateway.engines.dispatcher import Dispatcher
from gateway.jobs.bootstrap import start_gateway
from gateway.jobs.errors import JobError
from gateway.store.migrate import ensure_schema

log = logging.getLogger("uvicorn.error").getChild("gateway")  # shown by uvicorn's own handler


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(ensure_schema, settings)
        state = start_gateway(settings, dispatcher)
        app.state.gw = state
        stop = asyncio.Event()
        task = None
        if settings.gateway_reconcile_in_api:
            task = asyncio.create_task(state.reconciler.run(stop), name="reconciler")
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=10)
            await state.close()

    app = FastAPI(title="ctutor gateway", version="0.1.0", lifespan=lifespan)
    app.include_router(api_router(), prefix="/api")
    app.include_router(scorecard_page.router)
    if settings.gateway_serve_at_root:
        app.include_router(api_router())

    @app.get("/api/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(JobError)
    async def _job_error(_request: Request, exc: JobError) -> JSONResponse:
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
        return JSONResponse(status_code=503, content={"detail": "Database unavailable, try again"})

    return app


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
