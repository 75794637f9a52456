"""Which shadow legs a new job gets: the effective setting, sampling, the in-flight cap, the engine's health.

A job may get a *shadow* leg (the same job on the setting's other engine) and, independently, an *A/A* leg (the
same job a second time on its own engine: the noise baseline). Every job that gets no shadow leg is counted
with its reason (`SkipReason`), and the decision is recorded on the primary leg's routing.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backends.registry import UnknownEngineError, canonical_engine
from gateway.engines.dispatcher import Dispatcher
from gateway.store.catalog_cache import CatalogCache
from gateway.store.shadow_counters import InFlight, SkipCounter, StalledEngines
from gateway.store.shadow_settings import EffectiveShadow, ShadowScope, SkipReason, effective_setting


class ExperimentKind(StrEnum):
    """What a shadow leg is compared for: another engine, the same engine again (A/A), or a replayed job."""

    SHADOW = "shadow"
    AA = "aa"
    REPLAY = "replay"
    # A re-run of a mismatched pair's job on one of its engines (gateway.compare.rejudge): judged with its twin,
    # never compared as a pair of its own.
    REJUDGE = "rejudge"


@dataclass(frozen=True)
class ShadowLeg:
    kind: ExperimentKind
    engine: str
    deadline_seconds: int
    properties: dict[str, Any]


@dataclass(frozen=True)
class ShadowDecision:
    legs: tuple[ShadowLeg, ...] = ()
    # Recorded on the primary leg's routing (property 7: every decision is recorded).
    record: dict[str, Any] = field(default_factory=dict)


class ShadowPolicy:
    """Decides the shadow legs of one job; cheap when shadowing is off (one cached lookup, one counter)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        catalog: CatalogCache,
        dispatcher: Dispatcher,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.dispatcher = dispatcher
        self.sample = sample
        self.skips = SkipCounter()
        self.in_flight = InFlight()
        self.stalled = StalledEngines()

    async def decide(
        self,
        primary: str,
        backend_id: str | None,
        content_id: str | None,
        staged: tuple[str | None, float] | None = None,
    ) -> ShadowDecision:
        """`staged`: a cutover stage's (shadow engine, fraction), which then decides the cross-engine shadow;
        the shadow setting still gives the cap, the deadline, the properties and the A/A fraction."""
        setting = await effective_setting(self.sessions, self.catalog, backend_id, content_id)
        if staged is not None:
            setting = _staged(setting, staged, backend_id)
        engine = _engine(setting)
        if not setting.enabled or (engine is None and setting.aa_fraction <= 0):
            self.skips.count(backend_id, content_id, SkipReason.OFF)
            return ShadowDecision(record={"skipped": SkipReason.OFF.value})
        assert setting.scope is not None and setting.scope_id is not None
        scope = {"scope": setting.scope.value, "scope_id": setting.scope_id}
        wanted: list[ShadowLeg] = []
        record: dict[str, Any] = dict(scope)
        if engine is not None and engine != primary:
            reason = await self._admit(setting, engine, setting.fraction)
            if reason is None:
                wanted.append(ShadowLeg(ExperimentKind.SHADOW, engine, setting.deadline_seconds, setting.properties))
            else:
                self.skips.count(backend_id, content_id, reason)
                record["skipped"] = reason.value
        else:
            self.skips.count(backend_id, content_id, SkipReason.OFF)
            record["skipped"] = SkipReason.OFF.value
        if setting.aa_fraction > 0 and self.sample() < setting.aa_fraction:
            if await self._under_cap(setting, len(wanted)):
                wanted.append(ShadowLeg(ExperimentKind.AA, primary, setting.deadline_seconds, {}))
            else:
                record["aa_skipped"] = SkipReason.CAP_REACHED.value
        if wanted:
            self.in_flight.started(setting.scope, setting.scope_id, len(wanted))
        return ShadowDecision(legs=tuple(wanted), record=record)

    async def _admit(self, setting: EffectiveShadow, engine: str, fraction: float) -> SkipReason | None:
        if fraction <= 0 or self.sample() >= fraction:
            return SkipReason.SAMPLED_OUT
        if not await self._under_cap(setting, 0):
            return SkipReason.CAP_REACHED
        # This process's own sends (an in-process reconciler), or the outbox as any reconciler left it.
        if not self.dispatcher.reachable(engine) or await self.stalled.stalled(self.sessions, engine):
            return SkipReason.ENGINE_UNREACHABLE
        return None

    async def _under_cap(self, setting: EffectiveShadow, extra: int) -> bool:
        assert setting.scope is not None and setting.scope_id is not None
        scope = ShadowScope(setting.scope)
        count = await self.in_flight.count(self.sessions, scope, setting.scope_id, setting.max_in_flight)
        return count + extra < setting.max_in_flight


# A stage that shadows without a shadow setting of its own gets this cap on unfinished shadow legs.
STAGED_MAX_IN_FLIGHT = 100


def _staged(setting: EffectiveShadow, staged: tuple[str | None, float], backend_id: str | None) -> EffectiveShadow:
    engine, fraction = staged
    if setting.scope is None:  # no shadow setting: the stage's numbers with the defaults, scoped to the backend
        return replace(
            setting,
            enabled=True,
            scope=ShadowScope.BACKEND,
            scope_id=backend_id or "",
            engine=engine,
            fraction=fraction,
            max_in_flight=STAGED_MAX_IN_FLIGHT,
        )
    return replace(setting, enabled=True, engine=engine, fraction=fraction)


def _engine(setting: EffectiveShadow) -> str | None:
    if not setting.engine:
        return None
    try:
        return canonical_engine(setting.engine)
    except UnknownEngineError:
        return None
