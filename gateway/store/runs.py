"""The submit path's writes in as few database round trips as possible.

`insert_run` commits a new `result` row and its primary leg together. On PostgreSQL that is ONE statement in
autocommit (a data-modifying CTE: `WITH r AS (INSERT INTO result ... ON CONFLICT DO NOTHING RETURNING id)
INSERT INTO leg ... SELECT ... FROM r`), atomic like any single statement: both rows or neither. SQLite (the
embedded default, one writer anyway) runs the same two inserts in one transaction. A row that already exists
for the same (member, content, commit) inserts nothing and returns False: the caller then applies the
re-submission rules to the existing row.

Both are Core statements on the tables (not ORM-enabled DML, which re-processes its values on every
execution), built once with bind parameters. On PostgreSQL the statement is compiled once per column set and
leg count and executed on the driver's connection (`gateway.store.driver`), skipping SQLAlchemy's per-call
execution layer, the larger part of this statement's CPU cost.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

from sqlalchemy import Table, bindparam, insert, or_, select, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from gateway.store import driver
from gateway.store.models import Leg, Result

UNIQUE_RUN = "uq_result_member_content_version"
RESULTS: Table = Result.__table__  # type: ignore[assignment]
LEGS: Table = Leg.__table__  # type: ignore[assignment]
_RUN_COLUMNS = ("course_member_id", "course_content_id", "version_identifier")


async def insert_run(engine: AsyncEngine, row: dict[str, Any], leg: dict[str, Any], *more_legs: dict[str, Any]) -> bool:
    """Insert the row and its legs (each leg's result_id must be row["id"]; the primary first, then its shadow
    legs, all with the same columns) in one statement or transaction; False if the run already exists."""
    legs = (leg, *more_legs)
    if driver.supported(engine):
        return await _insert_run_postgres(engine, row, legs)
    return await _insert_run_generic(engine, row, legs)


def _prefixed(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{name}": value for name, value in values.items()}


@functools.cache
def _postgres_insert(row_columns: tuple[str, ...], leg_columns: tuple[str, ...], n_legs: int = 1) -> Any:
    """Built once per column set and leg count: the statement's SQL and cache key are then reused, only
    parameters change. Several legs are one `INSERT ... SELECT ... UNION ALL SELECT ...` from the new row."""
    new_row = (
        postgresql.insert(RESULTS)
        .values({name: bindparam(f"r_{name}", type_=RESULTS.c[name].type) for name in row_columns})
        .on_conflict_do_nothing(constraint=UNIQUE_RUN)
        .returning(RESULTS.c.id)
        .cte("new_row")
    )
    columns = [name for name in leg_columns if name != "result_id"]
    selects = [
        select(*[bindparam(f"{_leg_prefix(i)}{name}", type_=LEGS.c[name].type) for name in columns], new_row.c.id)
        for i in range(n_legs)
    ]
    source = selects[0] if n_legs == 1 else union_all(*selects)
    return insert(LEGS).add_cte(new_row).from_select([*columns, "result_id"], source).returning(LEGS.c.id)


def _leg_prefix(index: int) -> str:
    return "l_" if index == 0 else f"l{index}_"


# Keyed by the sync engine: an AsyncEngine proxy compares through a slower path on every lookup.
_DRIVER_INSERTS: weakref.WeakKeyDictionary[Engine, dict[tuple[Any, ...], driver.DriverStatement]] = (
    weakref.WeakKeyDictionary()
)


def _driver_insert(
    engine: AsyncEngine, row_columns: tuple[str, ...], leg_columns: tuple[str, ...], n_legs: int
) -> driver.DriverStatement:
    """`_postgres_insert` compiled for this engine's dialect, once per column set and leg count."""
    compiled = _DRIVER_INSERTS.setdefault(engine.sync_engine, {})
    key = (row_columns, leg_columns, n_legs)
    found = compiled.get(key)
    if found is None:
        found = compiled[key] = driver.DriverStatement.compile(
            engine, _postgres_insert(row_columns, leg_columns, n_legs)
        )
    return found


async def _insert_run_postgres(engine: AsyncEngine, row: dict[str, Any], legs: tuple[dict[str, Any], ...]) -> bool:
    stmt = _driver_insert(engine, tuple(row), tuple(legs[0]), len(legs))
    params = _prefixed("r_", row)
    for index, leg in enumerate(legs):
        params |= _prefixed(_leg_prefix(index), {k: v for k, v in leg.items() if k != "result_id"})
    inserted = await driver.fetchrow(engine, stmt.sql, stmt.arguments(params))
    return inserted is not None


async def _insert_run_generic(engine: AsyncEngine, row: dict[str, Any], legs: tuple[dict[str, Any], ...]) -> bool:
    stmt = sqlite.insert(RESULTS).values(**row).on_conflict_do_nothing(index_elements=list(_RUN_COLUMNS))
    async with engine.begin() as conn:
        if (await conn.execute(stmt.returning(RESULTS.c.id))).first() is None:
            return False
        await conn.execute(insert(LEGS), list(legs))
    return True


def is_run_of(leg: Leg, row: Result) -> bool:
    """Whether `leg` is the run the row's `test_system_id` names: by the gateway's leg id, or (once the engine
    chose its own, a Prefect flow run id) by the engine's run id."""
    return row.test_system_id is not None and row.test_system_id in (leg.id, leg.engine_run_id)


def names_leg(run_id: Any) -> Any:
    """SQL: the leg a run id (a value or a column such as `Result.test_system_id`) names, by either id."""
    return or_(Leg.id == run_id, Leg.engine_run_id == run_id)


async def row_leg(session: AsyncSession, row: Result, *, lock: bool = False) -> Leg | None:
    """The leg the row's `test_system_id` names (either id); `lock`: FOR UPDATE (PostgreSQL)."""
    if not row.test_system_id:
        return None
    leg = await find_leg(session, row.test_system_id)
    if leg is not None and lock:
        leg = await session.get(Leg, leg.id, with_for_update=True, populate_existing=True)
    return leg


async def find_leg(session: AsyncSession, run_id: str) -> Leg | None:
    """The leg a run id names: the gateway's id (`test_system_id`, the task id) or the engine's own run id.

    A Prefect flow run has its own id beside the gateway's leg id (its idempotency key and name); an operator or
    a flow may hold either, so every route that takes a run id accepts both (indexed: migration 0002).
    """
    leg = await session.get(Leg, run_id)
    if leg is not None:
        return leg
    found = select(Leg).where(Leg.engine_run_id == run_id).order_by(Leg.created_at).limit(1)
    return (await session.execute(found)).scalars().first()
