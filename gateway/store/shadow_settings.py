"""Shadow settings (per execution backend, overridden per course content) and the counters of skipped shadows.

The submit path reads the effective setting of a job on every request, so it is cached in the catalog cache
(a setting written in this process clears it at once; another process's write shows after the cache's ttl):
changes take effect for new jobs without a restart. "Off" is cached too, so shadowing off costs no query.

Skipped shadows are counted in memory on the hot path and added to `shadow_skip` by the reconciler's tick
(`SkipCounter.flush`): a count is never dropped silently, and a submit never pays a write for it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.catalog_cache import CatalogCache
from gateway.store.models import Leg, Result, ShadowSetting, ShadowSkip, new_id, utcnow


class ShadowScope(StrEnum):
    BACKEND = "backend"
    CONTENT = "content"


class SkipReason(StrEnum):
    """Why a job got no shadow leg; every skip is counted under one of these."""

    OFF = "shadowing_off"
    SAMPLED_OUT = "sampled_out"
    CAP_REACHED = "cap_reached"
    ENGINE_UNREACHABLE = "engine_unreachable"


@dataclass(frozen=True)
class EffectiveShadow:
    """The setting that applies to one (backend, content): the content's override, else the backend's."""

    enabled: bool
    scope: ShadowScope | None = None
    scope_id: str | None = None
    engine: str | None = None
    fraction: float = 0.0
    max_in_flight: int = 0
    deadline_seconds: int = 1800
    aa_fraction: float = 0.0
    properties: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row: ShadowSetting) -> EffectiveShadow:
        return cls(
            enabled=bool(row.enabled),
            scope=ShadowScope(row.scope),
            scope_id=row.scope_id,
            engine=row.engine,
            fraction=float(row.fraction or 0.0),
            max_in_flight=int(row.max_in_flight or 0),
            deadline_seconds=int(row.deadline_seconds or 1800),
            aa_fraction=float(row.aa_fraction or 0.0),
            properties=dict(row.properties or {}),
        )


OFF = EffectiveShadow(enabled=False)


def _scope_filter(backend_id: str | None, content_id: str | None) -> Any:
    return or_(
        (ShadowSetting.scope == ShadowScope.BACKEND) & (ShadowSetting.scope_id == (backend_id or "")),
        (ShadowSetting.scope == ShadowScope.CONTENT) & (ShadowSetting.scope_id == (content_id or "")),
    )


async def effective_setting(
    sessions: async_sessionmaker[AsyncSession], cache: CatalogCache, backend_id: str | None, content_id: str | None
) -> EffectiveShadow:
    key = ("shadow", backend_id or "", content_id or "")
    found: EffectiveShadow | None = cache.get(key)
    if found is not None:
        return found
    async with sessions() as session:
        rows = (await session.execute(select(ShadowSetting).where(_scope_filter(backend_id, content_id)))).scalars()
        by_scope = {row.scope: row for row in rows}
    row = by_scope.get(ShadowScope.CONTENT) or by_scope.get(ShadowScope.BACKEND)
    found = EffectiveShadow.of(row) if row is not None else OFF
    cache.put(key, found)
    return found


# ------------------------------------------------------------------------------------------------ the settings
SETTING_FIELDS = ("enabled", "engine", "fraction", "max_in_flight", "deadline_seconds", "aa_fraction", "properties")


async def put_setting(
    session: AsyncSession, scope: ShadowScope, scope_id: str, values: dict[str, Any], user_id: str | None
) -> ShadowSetting:
    """Create or update the setting of one scope (only the given fields change)."""
    row = (
        await session.execute(
            select(ShadowSetting).where(ShadowSetting.scope == scope, ShadowSetting.scope_id == scope_id)
        )
    ).scalar_one_or_none()
    if row is None:
        row = ShadowSetting(
            id=new_id(),
            scope=scope.value,
            scope_id=scope_id,
            enabled=True,
            fraction=0.0,
            max_in_flight=100,
            deadline_seconds=1800,
            aa_fraction=0.0,
        )
        session.add(row)
    for name in SETTING_FIELDS:
        if name in values and values[name] is not None:
            setattr(row, name, values[name])
    row.updated_by = user_id
    row.updated_at = utcnow()
    await session.flush()
    return row


async def list_settings(session: AsyncSession) -> list[ShadowSetting]:
    return list(
        (await session.execute(select(ShadowSetting).order_by(ShadowSetting.scope, ShadowSetting.scope_id))).scalars()
    )


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
class InFlight:
    """Unfinished shadow legs per setting scope: a count from the store at most every `ttl` seconds, plus the
    legs this process started since (so a burst cannot overshoot the cap by more than other processes' bursts)."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = asyncio.Lock()

    async def count(self, sessions: async_sessionmaker[AsyncSession], scope: ShadowScope, scope_id: str) -> int:
        key = (scope.value, scope_id)
        hit = self._counts.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        column = Result.execution_backend_id if scope == ShadowScope.BACKEND else Result.course_content_id
        stmt = (
            select(func.count(Leg.id))
            .join(Result, Result.id == Leg.result_id)
            .where(Leg.role == "shadow", Leg.finished.is_(False), column == scope_id)
        )
        async with sessions() as session:
            n = int(await session.scalar(stmt) or 0)
        self._counts[key] = (time.monotonic() + self.ttl, n)
        return n

    def started(self, scope: ShadowScope, scope_id: str, n: int = 1) -> None:
        key = (scope.value, scope_id)
        hit = self._counts.get(key)
        if hit is not None:
            self._counts[key] = (hit[0], hit[1] + n)

    def forget(self) -> None:
        self._counts.clear()


class StalledEngines:
    """Engines whose shadow legs the outbox could not send lately, as the store shows it (read at most every
    `ttl` seconds): the API sends no shadow leg itself, so it learns of a shadow engine that is down from the
    legs a reconciler (maybe in another process) left in the outbox with an error."""

    def __init__(self, ttl: float = 1.0, window: float = 30.0) -> None:
        self.ttl = ttl
        self.window = window
        self._stalled: tuple[float, frozenset[str]] | None = None
        self._lock = asyncio.Lock()

    async def stalled(self, sessions: async_sessionmaker[AsyncSession], engine: str) -> bool:
        hit = self._stalled
        if hit is None or hit[0] <= time.monotonic():
            async with self._lock:
                hit = self._stalled
                if hit is None or hit[0] <= time.monotonic():
                    hit = self._stalled = (time.monotonic() + self.ttl, await self._read(sessions))
        return engine in hit[1]

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
