"""The thin reference for bench_submit.py: FastAPI, one PostgreSQL insert, one `send_task`. Nothing else.

`send_task` runs on 4 long-lived threads of its own, as the gateway's dispatcher does: Celery builds its result
backend once per thread (a pooled PostgreSQL connection each), so anyio's pool of up to 40 threads would hold
up to 40 connections and exhaust a shared server's 100 under load.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI

from common.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    state: dict[str, Any] = {}
    sends = ThreadPoolExecutor(max_workers=4, thread_name_prefix="send")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        from backends.celery.factory import create_app as celery_app

        dsn = settings.postgres_url("psycopg2").replace("postgresql+psycopg2", "postgresql")  # type: ignore[union-attr]
        state["pool"] = await asyncpg.create_pool(dsn, min_size=4, max_size=20)
        async with state["pool"].acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS ref_result (id text primary key, body jsonb, status int)")
        state["celery"] = celery_app(settings, main="bench-reference")
        yield
        await state["pool"].close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/ref")
    async def submit(body: dict[str, Any]) -> dict[str, Any]:
        rid = str(uuid.uuid4())
        async with state["pool"].acquire() as conn:
            await conn.execute("INSERT INTO ref_result (id, body, status) VALUES ($1, $2::jsonb, 3)", rid, "{}")
        await asyncio.get_running_loop().run_in_executor(
            sends,
            functools.partial(
                state["celery"].send_task,
                "ctutor_backend.tasks.student_testing",
                kwargs={"test_job": body},
                task_id=rid,
                queue="high_priority",
                priority=8,
            ),
        )
        return {"id": rid, "status": 3}

    return app
