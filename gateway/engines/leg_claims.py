"""How the reconciler's rooms take legs to write: row locks on PostgreSQL, one in-process writer on SQLite.

Several reconcilers may run at once (the API's background task, `gateway reconcile`): on PostgreSQL each takes
the legs it writes with `FOR UPDATE SKIP LOCKED`, re-checking that they are still open, and holds the locks
while it reads their results and writes, so no leg is finished twice. SQLite has no row locks; there one
in-process lock keeps a single writer, which is what the embedded default needs. Whoever else reads a leg and
writes it back (a cancel, a worker's write-back) takes the same lock through `exclusive()`: a refresh holds its
rows across the engine call, so without it the refresh could commit what it read before a cancel over the
cancel's write (a row left CANCELLING for ever, issue 16).

The relay, the observer and the completion follower share one `LegClaims`, so they share its lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.models import Leg, Result


@dataclass
class TickReport:
    """What one tick (or one outbox flush) did: the figures a caller or a test reads."""

    dispatched: int = 0
    deferred: int = 0
    polled: int = 0
    finished: int = 0
    batches: int = 0
    # What the tick's follow-up steps did, by step name (e.g. comparisons written).
    steps: dict[str, int] = field(default_factory=dict)
    # The outbox claim came back full: more legs may be due than one claim takes.
    outbox_full: bool = False

    @property
    def busy(self) -> bool:
        """Worth another tick at once: only a full outbox claim leaves work behind. A tick polls every open leg
        and its steps drain their own backlogs, so legs that finished in it are no reason to tick again (under
        steady load one always does: ticking again at once then kept the reconciler spinning)."""
        return self.outbox_full


class LegClaims:
    """Locked batches of legs with their result rows, and the single-writer lock where rows cannot be locked."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], batch_size: int = 5000) -> None:
        self.sessions = sessions
        # Legs per page (observing) and per chunk (pushed completions); the outbox takes at most OUTBOX_BATCH.
        self.batch_size = batch_size
        bind = sessions.kw.get("bind")
        self.is_postgres = bind is not None and bind.dialect.name == "postgresql"
        # SQLite has no row locks: one writer task at a time inside this process (a tick or a refresh).
        self._local_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def claim(self, stmt: Select[Any]) -> AsyncIterator[tuple[Sequence[Leg], dict[str, Result]]]:
        """One transaction holding a locked batch of legs and their result rows; committed on exit."""
        async with self.sessions() as session, session.begin():
            legs = (await session.execute(self.locked(stmt))).scalars().all()
            rows = await self.rows_for(session, legs) if legs else {}
            yield legs, rows

    @contextlib.asynccontextmanager
    async def claim_joined(self, where: Any) -> AsyncIterator[tuple[Sequence[Leg], dict[str, Result]]]:
        """`claim` for `Leg` rows matching `where`, their result rows read by the same statement (one round trip
        less): the legs locked (`SKIP LOCKED`), the rows read as `rows_for` does, without a lock."""
        stmt = select(Leg, Result).outerjoin(Result, Result.id == Leg.result_id).where(where)
        async with self.sessions() as session, session.begin():
            pairs = (await session.execute(self.locked(stmt))).all()
            legs = [leg for leg, _ in pairs]
            rows = {row.id: row for _, row in pairs if row is not None}
            yield legs, rows

    def locked(self, stmt: Select[Any]) -> Select[Any]:
        return stmt.with_for_update(skip_locked=True, of=Leg) if self.is_postgres else stmt

    @contextlib.asynccontextmanager
    async def writer(self, wait: bool = True) -> AsyncIterator[bool]:
        """On SQLite, the in-process single-writer lock; yields False when `wait` is off and it is taken."""
        if self.is_postgres:
            yield True
            return
        if not wait and self._local_lock.locked():
            yield False
            return
        async with self._local_lock:
            yield True

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """A read-modify-write of legs and rows outside the reconciler, serialised with ticks and refreshes.

        On SQLite it waits for the in-process writer lock, so no refresh holds stale copies of the rows meanwhile;
        on PostgreSQL it is a no-op: the caller locks the leg row (`FOR UPDATE`), which the reconciler's
        `SKIP LOCKED` claims respect.
        """
        async with self.writer():
            yield

    @staticmethod
    async def rows_for(session: AsyncSession, legs: Sequence[Leg]) -> dict[str, Result]:
        ids = {leg.result_id for leg in legs if leg.result_id}
        if not ids:
            return {}
        rows = (await session.execute(select(Result).where(Result.id.in_(ids)))).scalars().all()
        return {row.id: row for row in rows}
