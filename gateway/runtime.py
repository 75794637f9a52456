"""Everything one gateway process holds: settings, the database, the dispatcher, the authenticator, the reconciler.

Built once per process (the API's lifespan, `gateway reconcile`) and handed to the job services and routes.
It owns what must be closed when the process stops: the database pool and, through the dispatcher, every
engine adapter.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from common.settings import Settings
from gateway.engines.dispatcher import Dispatcher, DispatchMode, SendBy
from gateway.engines.health import HealthMonitor
from gateway.engines.reconciler import Reconciler
from gateway.engines.shadowing import ShadowPolicy
from gateway.legs.machine import FinishHooks
from gateway.store.accounts import Authenticator
from gateway.store.catalog_cache import CatalogCache
from gateway.store.db import make_async_engine, make_sessionmaker


@dataclass
class GatewayState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    dispatcher: Dispatcher
    auth: Authenticator
    reconciler: Reconciler
    # What runs when a leg finishes, wherever it finishes (reconciler, write-back, cancel): built by
    # `gateway.jobs.bootstrap.start_gateway` with every follow-up, handed to whoever finishes legs.
    finish_hooks: FinishHooks
    # Course contents/backends/members for the submit path (see gateway.store.catalog_cache).
    catalog: CatalogCache
    # Which shadow legs a new job gets, and the counters of the ones it did not.
    shadow: ShadowPolicy
    # Engine health for the unauthenticated routes: cached, one probe at a time, on threads of its own.
    health: HealthMonitor

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def send_by(self, engine: str) -> SendBy:
        """Who sends a new leg for `engine`: its request, or the outbox relay.

        The relay only for an engine that cannot refuse a job at its send (`DispatchMode.OUTBOX`), and only where
        a relay hears of the leg at once: the reconciler in this process (handed the leg directly while its
        wake-up loop runs, woken otherwise), or any reconciler on PostgreSQL (the leg's insert raises a NOTIFY,
        migration 0009). With SQLite and the reconciler in another process the request keeps sending, so no job
        waits for a tick."""
        if self.dispatcher.dispatch_mode(engine) is not DispatchMode.OUTBOX:
            return SendBy.REQUEST
        if self.reconciler.relaying:
            return SendBy.HAND_OVER
        if self.settings.gateway_reconcile_in_api or self.is_postgres:
            return SendBy.RELAY
        return SendBy.REQUEST

    @classmethod
    def build(
        cls, settings: Settings, dispatcher: Dispatcher | None = None, finish_hooks: FinishHooks | None = None
    ) -> GatewayState:
        engine = make_async_engine(settings)
        sessions = make_sessionmaker(engine)
        dispatcher = dispatcher or Dispatcher(settings)
        catalog = CatalogCache(settings.gateway_catalog_cache_seconds)
        shadow = ShadowPolicy(sessions, catalog, dispatcher)
        finish_hooks = finish_hooks or FinishHooks()
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            dispatcher=dispatcher,
            auth=Authenticator(sessions, settings.gateway_auth_cache_seconds),
            reconciler=Reconciler(sessions, dispatcher, settings, skips=shadow.skips, hooks=finish_hooks),
            finish_hooks=finish_hooks,
            catalog=catalog,
            shadow=shadow,
            health=HealthMonitor(dispatcher),
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.shadow.skips.flush(self.sessions)
        self.health.close()
        self.dispatcher.close()
        await self.engine.dispose()
