"""The shadow policy's in-memory counters: skips waiting to be written, shadow legs in flight, stalled engines.

Skipped shadows are counted in memory on the hot path and added to `shadow_skip` by the reconciler's tick
(`SkipCounter.flush`): a count is never dropped silently, and a submit never pays a write for it. The in-flight
counts and the stalled engines are read from the store at most once per `ttl` (`cachetools.TTLCache`).
The settings rows themselves are `gateway.store.shadow_settings`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from cachetools import TTLCache
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.models import Leg, Result, ShadowSkip, new_id, utcnow
from gateway.store.shadow_settings import ShadowScope, SkipReason

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
    """A scope's count, changed in place by `started` (so the entry keeps the expiry of its read)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


class InFlight:
    """Unfinished shadow legs per setting scope: a count from the store at most every `ttl` seconds, plus the
    legs this process started since (so a burst cannot overshoot the cap by more than other processes' bursts)."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._counts: TTLCache[tuple[str, str], _Count] = TTLCache(maxsize=_MAX_SCOPES, ttl=ttl)

    async def count(self, sessions: async_sessionmaker[AsyncSession], scope: ShadowScope, scope_id: str) -> int:
        key = (scope.value, scope_id)
        hit = self._counts.get(key)
        if hit is not None:
            return hit.n
        column = Result.execution_backend_id if scope == ShadowScope.BACKEND else Result.course_content_id
        stmt = (
            select(func.count(Leg.id))
            .join(Result, Result.id == Leg.result_id)
            .where(Leg.role == "shadow", Leg.finished.is_(False), column == scope_id)
        )
        async with sessions() as session:
            n = int(await session.scalar(stmt) or 0)
        self._counts[key] = _Count(n)
        return n

    def started(self, scope: ShadowScope, scope_id: str, n: int = 1) -> None:
        hit = self._counts.get((scope.value, scope_id))
        if hit is not None:
            hit.n += n

    def forget(self) -> None:
        self._counts.clear()


class StalledEngines:
    """Engines whose shadow legs the outbox could not send lately, as the store shows it (read at most every
    `ttl` seconds): the API sends no shadow leg itself, so it learns of a shadow engine that is down from the
    legs a reconciler (maybe in another process) left in the outbox with an error."""

    def __init__(self, ttl: float = 1.0, window: float = 30.0) -> None:
        self.window = window
        # One entry: the set of stalled engines, read once per `ttl` (one reader at a time).
        self._stalled: TTLCache[str, frozenset[str]] | None = None
        self.ttl = ttl
        self._lock = asyncio.Lock()

    @property
    def ttl(self) -> float:
        return self._ttl

    @ttl.setter
    def ttl(self, value: float) -> None:
        """A new ttl starts afresh; 0 reads the store on every call."""
        self._ttl = value
        self._stalled = TTLCache(maxsize=1, ttl=value) if value > 0 else None

    async def stalled(self, sessions: async_sessionmaker[AsyncSession], engine: str) -> bool:
        cache = self._stalled
        if cache is None:
            return engine in await self._read(sessions)
        hit = cache.get("engines")
        if hit is None:
            async with self._lock:
                hit = cache.get("engines")
                if hit is None:
                    hit = cache["engines"] = await self._read(sessions)
        return engine in hit

    async def _read(self, sessions: async_sessionmaker[AsyncSession]) -> frozenset[str]:
        since = utcnow() - timedelta(seconds=self.window)
        stmt = (
            select(Leg.engine)
            .where(
                Leg.finished.is_(False),
                Leg.dispatch_state == "pending",
                Leg.role == "shadow",
                Leg.dispatch_attempts > 0,
                Leg.last_error.is_not(None),
                Leg.updated_at >= since,
            )
            .distinct()
        )
        async with sessions() as session:
            return frozenset((await session.execute(stmt)).scalars())
