"""The shadow policy's in-memory counters: skips waiting to be written, shadow legs in flight, stalled engines.

Skipped shadows are counted in memory on the hot path and added to `shadow_skip` by the reconciler's tick
(`SkipCounter.flush`): a count is never dropped silently, and a submit never pays a write for it. The in-flight
counts and the stalled engines are read from the store by one reader at a time and refreshed ahead of their
`ttl` (`gateway.store.refresh_ahead`), each through a partial index that bounds its work (migration 0013).
The settings rows themselves are `gateway.store.shadow_settings`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, literal_column, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.models import Leg, Result, ShadowSkip, new_id, utcnow
from gateway.store.refresh_ahead import RefreshAhead
from gateway.store.shadow_settings import ShadowScope, SkipReason

# Literals, not bind parameters: PostgreSQL uses a partial index for a prepared statement's generic plan only if
# the query's own predicate proves the index's (`ix_leg_shadow_open`, `ix_leg_shadow_stalled`).
_SHADOW = literal_column("'shadow'")  # gateway.legs.states.LegRole.SHADOW
_PENDING = literal_column("'pending'")  # gateway.legs.states.DispatchState.PENDING

# Scopes (a backend, a content) whose in-flight count is held at once: beyond it the least recently used goes.
_MAX_SCOPES = 10_000


# ---------------------------------------------------------------------------------------------- skip counters
class SkipCounter:
    """Skips counted in memory, flushed into `shadow_skip` by the reconciler (and when the process stops)."""

    def __init__(self) -> None:
        self._pending: Counter[tuple[str, str, str]] = Counter()

    def count(self, backend_id: str | None, content_id: str | None, reason: SkipReason) -> None:
        self._pending[(backend_id or "", content_id or "", reason.value)] += 1

    def pending(self) -> dict[tuple[str, str, str], int]:
        return dict(self._pending)

    async def flush(self, sessions: async_sessionmaker[AsyncSession]) -> int:
        """Add the pending counts to the table; what failed to write stays pending for the next flush."""
        pending, self._pending = self._pending, Counter()
        if not pending:
            return 0
        try:
            async with sessions() as session, session.begin():
                for (backend_id, content_id, reason), n in pending.items():
                    await _add_skips(session, backend_id, content_id, reason, n)
        except Exception:
            self._pending.update(pending)
            raise
        return sum(pending.values())


async def _add_skips(session: AsyncSession, backend_id: str, content_id: str, reason: str, n: int) -> None:
    key = (
        ShadowSkip.execution_backend_id == backend_id,
        ShadowSkip.course_content_id == content_id,
        ShadowSkip.reason == reason,
    )
    changed = await session.execute(
        update(ShadowSkip).where(*key).values(count=ShadowSkip.count + n, updated_at=utcnow())
    )
    if getattr(changed, "rowcount", 0):
        return
    try:
        async with session.begin_nested():
            session.add(
                ShadowSkip(
                    id=new_id(), execution_backend_id=backend_id, course_content_id=content_id, reason=reason, count=n
                )
            )
    except IntegrityError:  # another process inserted the key first
        await session.execute(update(ShadowSkip).where(*key).values(count=ShadowSkip.count + n))


# ---------------------------------------------------------------------------------------------- in flight
class _Count:
    """A scope's count, changed in place by `started` (so the entry keeps the age of its read)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


def in_flight_count(scope: ShadowScope, scope_id: str, cap: int) -> Any:
    """Unfinished shadow legs of one scope, counted up to `cap` (the decision only asks "under the cap?").

    Read through the partial index of unfinished shadow legs (`ix_leg_shadow_open`, migration 0013), stopping at
    `cap` rows: the work is bounded by the cap, not by the backlog, however many shadow legs are still open."""
    column = Result.execution_backend_id if scope == ShadowScope.BACKEND else Result.course_content_id
    open_legs = (
        select(Leg.id)
        .join(Result, Result.id == Leg.result_id)
        .where(Leg.role == _SHADOW, Leg.finished.is_(False), column == scope_id)
        .limit(max(cap, 0))
        .subquery()
    )
    return select(func.count()).select_from(open_legs)


class InFlight:
    """Unfinished shadow legs per setting scope: a count from the store (up to the cap), plus the legs this process
    started since (so a burst cannot overshoot the cap by more than other processes' bursts).

    One count per scope runs at a time (single flight), and a count older than half its `ttl` is answered from
    memory while one background read refreshes it (`RefreshAhead`): a decision never waits for the store once
    the scope was read, and the requests in flight when a count ages never each run it (issue 29). With the
    default ttl a scope in use is read about once a second, and no count is older than that."""

    def __init__(self, ttl: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.ttl = ttl

    @property
    def ttl(self) -> float:
        return self._ttl

    @ttl.setter
    def ttl(self, value: float) -> None:
        self._ttl = value
        self._counts: RefreshAhead[tuple[str, str], _Count] = RefreshAhead(
            ttl=value, refresh_after=value / 2, maxsize=_MAX_SCOPES, clock=self._clock
        )

    @property
    def reads(self) -> int:
        """Counts read from the store so far (a test proves concurrent decisions share one)."""
        return self._counts.loads

    async def count(
        self, sessions: async_sessionmaker[AsyncSession], scope: ShadowScope, scope_id: str, cap: int
    ) -> int:
        """At least `cap` means "at the cap": the store is read no further than that."""

        async def read() -> _Count:
            async with sessions() as session:
                return _Count(int(await session.scalar(in_flight_count(scope, scope_id, cap)) or 0))

        hit = await self._counts.get((scope.value, scope_id), read)
        return hit.n if hit is not None else 0

    def started(self, scope: ShadowScope, scope_id: str, n: int = 1) -> None:
        hit = self._counts.peek((scope.value, scope_id))
        if hit is not None:
            hit.n += n

    def forget(self) -> None:
        self._counts.forget()

    async def settled(self) -> None:
        """Until no count is being read (background refreshes included): what a test waits on."""
        await self._counts.settled()


class StalledEngines:
    """Engines whose shadow legs the outbox could not send lately, as the store shows it (read once at a time,
    refreshed ahead of its `ttl` like `InFlight`): the API sends no shadow leg itself, so it learns of a shadow
    engine that is down from the legs a reconciler (maybe in another process) left in the outbox with an error.

    The read goes through the partial index of shadow legs waiting in the outbox with an error
    (`ix_leg_shadow_stalled`, migration 0013): it touches the legs failing to be sent, not the whole outbox."""

    def __init__(self, ttl: float = 1.0, window: float = 30.0) -> None:
        self.window = window
        self.ttl = ttl

    @property
    def ttl(self) -> float:
        return self._ttl

    @ttl.setter
    def ttl(self, value: float) -> None:
        """A new ttl starts afresh; 0 reads the store on every call."""
        self._ttl = value
        self._stalled: RefreshAhead[str, frozenset[str]] | None = (
            RefreshAhead(ttl=value, refresh_after=value / 2, maxsize=1) if value > 0 else None
        )

    async def stalled(self, sessions: async_sessionmaker[AsyncSession], engine: str) -> bool:
        cache = self._stalled
        if cache is None:
            return engine in await self._read(sessions)
        hit = await cache.get("engines", lambda: self._read(sessions))
        return engine in (hit or frozenset())

    async def _read(self, sessions: async_sessionmaker[AsyncSession]) -> frozenset[str]:
        since = utcnow() - timedelta(seconds=self.window)
        stmt = (
            select(Leg.engine)
            .where(
                Leg.finished.is_(False),
                Leg.dispatch_state == _PENDING,
                Leg.role == _SHADOW,
                Leg.last_error.is_not(None),
                Leg.dispatch_attempts > 0,
                Leg.updated_at >= since,
            )
            .distinct()
        )
        async with sessions() as session:
            return frozenset((await session.execute(stmt)).scalars())
