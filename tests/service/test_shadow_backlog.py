"""The shadow decision costs the same at any backlog of open shadow legs (issue 29), counted, not timed.

What a decision asks of the store is the count of unfinished shadow legs of its scope (the cap) and the engines
with shadow legs stuck in the outbox (`gateway.store.shadow_counters`). Both used to scan the leg table, and the
count ran in every request in flight when it expired. Counted here on a real PostgreSQL:

- rows: the rows PostgreSQL reads from `leg` and `result` (its own statistics: sequential reads plus index
  entries, flushed by the backend that did the work) for each read, at 0, 5,000 and 10,000 open shadow legs;
- reads: how many store reads 64 concurrent decisions cost when the count is cold, and when it is old.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from gateway.store.migrate import upgrade
from gateway.store.shadow_counters import InFlight, StalledEngines
from gateway.store.shadow_settings import ShadowScope
from tests.service.conftest import fresh_pg_database
from tests.support.celery_worker import settings_from_env

pytestmark = pytest.mark.postgres

CONTENT = "cc-backlog"
CAP = 100
# Reading a count again this many times lets PostgreSQL switch the prepared statement to its generic plan (after
# five custom ones): the partial index must serve that plan too.
REPEAT = 8


@pytest.fixture
def database(postgres_db: Any, tmp_path: Path) -> Iterator[Any]:
    with fresh_pg_database(postgres_db) as db:
        upgrade(settings_from_env({"GATEWAY_DATA_DIR": str(tmp_path), **db.env()}))
        yield db


def add_open_shadow_legs(db: Any, start: int, stop: int) -> None:
    """Jobs of CONTENT with a finished primary and an unfinished shadow leg each (sent, waiting for its engine),
    plus as many finished shadow legs: history that must not be read either."""
    conn = psycopg2.connect(host=db.host, port=db.port, user=db.user, dbname=db.name)
    conn.autocommit = True
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            WITH r AS (
              INSERT INTO result (id, submit, course_member_id, course_content_id, execution_backend_id,
                                  test_system_id, result, version_identifier, status, version, created_at, updated_at)
              SELECT 'r-' || g, false, 'm', %(content)s, 'be', 'p-' || g, 0, 'v-' || g, 3, 0, now(), now()
              FROM generate_series(%(start)s, %(stop)s - 1) g RETURNING id)
            INSERT INTO leg (id, result_id, role, engine, task_name, phase, finished, spec, created_at, updated_at,
                             dispatch_state, dispatch_attempts, dispatch_faults, infra_retries, compare_due)
            SELECT kind || substr(r.id, 2), r.id, role, 'prefect', 't', 'queued', finished, '{}', now(), now(),
                   state, 1, 0, 0, false
            FROM r, (VALUES ('p', 'primary', true, 'sent'), ('s', 'shadow', false, 'sent'),
                            ('f', 'shadow', true, 'sent')) AS k(kind, role, finished, state)
            """,
            {"content": CONTENT, "start": start, "stop": stop},
        )
        cur.execute("ANALYZE leg; ANALYZE result")
    conn.close()


async def rows_read(engine: AsyncEngine) -> int:
    """Rows this engine's one connection has read from `leg` and `result` so far (its statistics flushed first)."""
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.execute(text("SELECT pg_stat_force_next_flush()"))  # flushed before the answer is sent
        await auto.execute(text("SELECT pg_stat_clear_snapshot()"))
        tables = await auto.scalar(
            text("SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables WHERE relname IN ('leg', 'result')")
        )
        indexes = await auto.scalar(
            text("SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes WHERE relname IN ('leg', 'result')")
        )
    return int(tables) + int(indexes)


async def cost_of_reads(db: Any) -> tuple[int, int]:
    """Rows read per in-flight count (a cold count each time) and per stalled-engines read, on one connection."""
    engine = create_async_engine(db.url("asyncpg"), pool_size=1, max_overflow=0)
    sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    try:
        counts = []
        for _ in range(REPEAT):
            in_flight = InFlight()
            counts.append(await in_flight.count(sessions, ShadowScope.CONTENT, CONTENT, CAP))
        assert len(set(counts)) == 1
        before = await rows_read(engine)
        for _ in range(REPEAT):
            await InFlight().count(sessions, ShadowScope.CONTENT, CONTENT, CAP)
        counted = (await rows_read(engine)) - before
        stalled = StalledEngines(ttl=0)
        before = await rows_read(engine)
        for _ in range(REPEAT):
            assert not await stalled.stalled(sessions, "prefect")
        stalled_rows = (await rows_read(engine)) - before
    finally:
        await engine.dispose()
    return counted // REPEAT, stalled_rows // REPEAT


def test_the_decisions_reads_are_bounded_by_the_cap_not_the_backlog(database: Any) -> None:
    empty = asyncio.run(cost_of_reads(database))
    add_open_shadow_legs(database, 0, 5_000)
    at_5k = asyncio.run(cost_of_reads(database))
    add_open_shadow_legs(database, 5_000, 10_000)
    at_10k = asyncio.run(cost_of_reads(database))
    assert empty == (0, 0)
    # The count stops at the cap: about a leg and its row per counted leg (a join reads a row or two ahead),
    # the same at 5,000 and 10,000 open legs.
    assert at_5k[0] <= 2 * CAP + 10 and at_10k[0] == at_5k[0], (at_5k, at_10k)
    # Nothing failed to be sent: the stalled read touches no leg, whatever the outbox holds.
    assert at_5k[1] == at_10k[1] == 0


def test_concurrent_decisions_share_one_count_and_an_old_count_is_refreshed_once(database: Any) -> None:
    add_open_shadow_legs(database, 0, 50)

    async def run() -> None:
        engine = create_async_engine(database.url("asyncpg"), pool_size=4, max_overflow=0)
        sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        clock = [0.0]
        in_flight = InFlight(clock=lambda: clock[0])  # the count's age is the test's, not the machine's
        try:
            counts = await asyncio.gather(
                *(in_flight.count(sessions, ShadowScope.CONTENT, CONTENT, CAP) for _ in range(64))
            )
            assert set(counts) == {50} and in_flight.reads == 1  # cold: one read for all 64
            in_flight.started(ShadowScope.CONTENT, CONTENT, 3)  # this process's own new shadow legs
            clock[0] += in_flight.ttl * 0.75  # old, not expired: answered at once, refreshed once
            counts = await asyncio.gather(
                *(in_flight.count(sessions, ShadowScope.CONTENT, CONTENT, CAP) for _ in range(64))
            )
            assert set(counts) == {53} and in_flight.reads == 2
            await in_flight.settled()
            assert await in_flight.count(sessions, ShadowScope.CONTENT, CONTENT, CAP) == 50  # the store's again
            assert in_flight.reads == 2
        finally:
            await engine.dispose()

    asyncio.run(run())
