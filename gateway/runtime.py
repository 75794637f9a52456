"""Everything one gateway process holds: settings, the database, the dispatcher, the authenticator, the reconciler.

Built once per process (the API's lifespan, `gateway reconcile`) and handed to the job services and routes.
It owns what must be closed when the process stops: the database pool and, through the dispatcher, every
engine adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from common.settings import Settings
from gateway.engines.dispatcher import Dispatcher
from gateway.engines.health import HealthMonitor
from gateway.engines.reconciler import Reconciler
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
    # Course contents/backends/members for the submit path (see gateway.store.catalog_cache).
    catalog: CatalogCache
    # Engine health for the unauthenticated routes: cached, one probe at a time, on threads of its own.
    health: HealthMonitor

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @classmethod
    def build(cls, settings: Settings, dispatcher: Dispatcher | None = None) -> GatewayState:
        engine = make_async_engine(settings)
        sessions = make_sessionmaker(engine)
        dispatcher = dispatcher or Dispatcher(settings)
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            dispatcher=dispatcher,
            auth=Authenticator(sessions, settings.gateway_auth_cache_seconds),
            reconciler=Reconciler(sessions, dispatcher, settings),
            catalog=CatalogCache(settings.gateway_catalog_cache_seconds),
            health=HealthMonitor(dispatcher),
        )

    async def close(self) -> None:
        self.health.close()
        self.dispatcher.close()
        await self.engine.dispose()
