"""The outbox marks written as single statements: a leg's send (`record_sent`, group-committed under load; a
relay's batch, `record_sent_many`) and a first failed send (`record_retry`).

The leg state machine (`gateway.legs.machine`) decides every transition on loaded rows; these are the same
transitions for the submit path's and the relay's hot paths, where a round trip counts, written straight to the
`leg` table. Each only moves a leg that is still pending and open: a pushed completion may have won the race.
"""

from __future__ import annotations

import weakref
from datetime import datetime

from sqlalchemy import Table, bindparam, func, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import object_session

from gateway.store import driver
from gateway.store.group_commit import GroupCommit
from gateway.store.models import Base, Leg, Result

# The `dispatch_state` strings of `gateway.legs.states.DispatchState` (the store sits below the legs'
# vocabulary; tests/fast/test_leg_writer.py checks they agree).
PENDING = "pending"
SENT = "sent"
PRIMARY = "primary"  # `gateway.legs.states.LegRole.PRIMARY`

LEGS: Table = Leg.__table__  # type: ignore[assignment]
RESULTS: Table = Result.__table__  # type: ignore[assignment]

_RECORD_SENT = (
    update(LEGS)
    .where(
        LEGS.c.id == bindparam("leg_id"),
        LEGS.c.dispatch_state == PENDING,
        LEGS.c.finished.is_(False),
    )
    .values(
        dispatch_state=SENT,
        last_error=None,
        dispatch_attempts=LEGS.c.dispatch_attempts + 1,
        engine_run_id=bindparam("run_id"),
        dispatched_at=bindparam("now", type_=LEGS.c.dispatched_at.type),
        next_attempt_at=None,
        deadline=func.coalesce(LEGS.c.deadline, bindparam("deadline", type_=LEGS.c.deadline.type)),
        updated_at=bindparam("now", type_=LEGS.c.updated_at.type),
    )
)


# A primary leg's row takes the engine's run id as its `test_system_id` (the legacy contract: it is the Prefect
# flow run id); the gateway's leg id keeps resolving everywhere (`runs.find_leg`). Only where the engine chose
# its own id (Prefect; Celery's run id is the leg id), and only while the row still shows the leg's id or its
# previous run id, read before the leg's mark below (same transaction).
_ADOPT_RUN_ID = (
    update(RESULTS)
    .where(
        LEGS.c.id == bindparam("leg_id"),
        LEGS.c.dispatch_state == PENDING,
        LEGS.c.finished.is_(False),
        LEGS.c.role == PRIMARY,
        RESULTS.c.id == LEGS.c.result_id,
        RESULTS.c.test_system_id.in_([LEGS.c.id, func.coalesce(LEGS.c.engine_run_id, LEGS.c.id)]),
    )
    .values(test_system_id=bindparam("run_id"))
)


# The same transition for a batch of legs on PostgreSQL, one statement: each leg's own run id, send time and
# deadline come in as parallel arrays.
_SENT_FROM = """
WITH sent AS (
    SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::timestamptz[], $4::timestamptz[])
        AS s(id, run_id, at, deadline)
)"""
_MARK_SENT = f"""
UPDATE leg SET dispatch_state = '{SENT}', dispatch_attempts = leg.dispatch_attempts + 1,
    engine_run_id = sent.run_id, dispatched_at = sent.at, next_attempt_at = NULL,
    deadline = coalesce(leg.deadline, sent.deadline), updated_at = sent.at, last_error = NULL
FROM sent
WHERE leg.id = sent.id AND leg.dispatch_state = '{PENDING}' AND NOT leg.finished
"""
_RECORD_SENT_MANY = _SENT_FROM + _MARK_SENT
# A batch where an engine chose its own run ids (Prefect): the rows adopt them in the same statement (a
# data-modifying CTE; both parts read the legs as they were before it). Celery's batches (run id = leg id) keep
# the plain statement above.
_RECORD_SENT_ADOPTING = (
    _SENT_FROM
    + f""", adopted AS (
    UPDATE result SET test_system_id = sent.run_id
    FROM sent, leg
    WHERE leg.id = sent.id AND sent.run_id <> sent.id AND leg.role = '{PRIMARY}' AND result.id = leg.result_id
      AND leg.dispatch_state = '{PENDING}' AND NOT leg.finished
      AND result.test_system_id IN (leg.id, coalesce(leg.engine_run_id, leg.id))
    RETURNING result.id
)"""
    + _MARK_SENT
)

_SentMark = tuple[str, str, datetime, datetime]  # leg id, engine run id, sent at, deadline
# Keyed by the sync engine (plain identity hashing; an AsyncEngine proxy compares through a slower path).
_SENT_MARKS: weakref.WeakKeyDictionary[Engine, tuple[GroupCommit[_SentMark], _SentWriter]] = weakref.WeakKeyDictionary()


async def _write_sent_marks(engine: AsyncEngine, marks: list[_SentMark]) -> None:
    if driver.supported(engine):
        ids, run_ids, times, deadlines = (list(column) for column in zip(*marks, strict=True))
        statement = _RECORD_SENT_ADOPTING if run_ids != ids else _RECORD_SENT_MANY
        await driver.execute(engine, statement, [ids, run_ids, times, deadlines])
        return
    params = [{"leg_id": leg, "run_id": run, "now": at, "deadline": deadline} for leg, run, at, deadline in marks]
    adopting = [{"leg_id": leg, "run_id": run} for leg, run, _at, _deadline in marks if run != leg]
    async with engine.begin() as conn:
        if adopting:
            await conn.execute(_ADOPT_RUN_ID, adopting)
        await conn.execute(_RECORD_SENT, params)


class _SentWriter:
    """The flush of one engine's sent marks. Holds the engine weakly (the cache must not keep a disposed engine
    alive) and the latest caller's proxy: every caller waits for its flush, so that proxy is alive then."""

    def __init__(self) -> None:
        self.engine: weakref.ref[AsyncEngine] | None = None

    async def __call__(self, marks: list[_SentMark]) -> None:
        alive = self.engine() if self.engine is not None else None
        if alive is None:
            raise RuntimeError("the database engine was disposed")
        await _write_sent_marks(alive, marks)


async def record_sent(engine: AsyncEngine, leg_id: str, run_id: str | None, now: datetime, deadline: datetime) -> None:
    """`machine.mark_sent` as an autocommit UPDATE (only a still-pending, open leg), committed before this
    returns. Concurrent calls share one statement (`GroupCommit`): under load the mark costs a fraction of a
    statement per leg instead of one each."""
    found = _SENT_MARKS.get(engine.sync_engine)
    if found is None:
        found = _SENT_MARKS[engine.sync_engine] = (GroupCommit(writer := _SentWriter()), writer)
    marks, writer = found
    writer.engine = weakref.ref(engine)
    await marks.add((leg_id, run_id or leg_id, now, deadline))


async def record_sent_many(engine: AsyncEngine, sent: list[tuple[str, str | None, datetime, datetime]]) -> None:
    """`record_sent` for a batch the caller already holds (the relay's sends: leg id, engine run id, sent at,
    deadline): one statement, no group to join."""
    if sent:
        await _write_sent_marks(engine, [(leg_id, run or leg_id, at, deadline) for leg_id, run, at, deadline in sent])


def join_leg(leg: Leg, rows: list[Base]) -> None:
    """A finished leg's follow-up rows join the leg's own transaction (the `join` of `machine.FinishHooks`): they
    are committed exactly when the end of the leg is. A leg in no session (a unit test's) adds nothing."""
    session = object_session(leg)
    if session is not None:
        session.add_all(rows)


async def record_retry(
    session: AsyncSession, leg_id: str, error: str | None, now: datetime, due: datetime, *, fault: bool = False
) -> None:
    """`machine.retry_later` (or a first `retry_fault`) for a leg the caller has not loaded (the submit path's
    first try): due again at `due` (`machine.next_attempt(now, 1)`)."""
    await session.execute(
        update(Leg)
        .where(Leg.id == leg_id, Leg.dispatch_state == PENDING)
        .values(
            dispatch_attempts=Leg.dispatch_attempts + 1,
            dispatch_faults=Leg.dispatch_faults + (1 if fault else 0),
            last_error=error,
            next_attempt_at=due,
            updated_at=now,
        )
    )
