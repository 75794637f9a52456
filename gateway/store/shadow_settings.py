"""Shadow settings: the rows per execution backend, overridden per course content, and how a job finds its own.

The submit path reads the effective setting of a job on every request, so it is cached in the catalog cache
(a setting written in this process clears it at once; another process's write shows after the cache's ttl):
changes take effect for new jobs without a restart. "Off" is cached too, so shadowing off costs no query.

The in-memory counters beside them (skips, shadow legs in flight, stalled engines) are
`gateway.store.shadow_counters`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.catalog_cache import CatalogCache
from gateway.store.models import ShadowSetting, new_id, utcnow


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
