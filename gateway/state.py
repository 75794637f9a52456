"""Everything one API process holds: settings, the database, the dispatcher, the authenticator, the reconciler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backends.settings import Settings
from gateway.auth import Authenticator
from gateway.dispatch import Dispatcher
from gateway.store.catalog_cache import CatalogCache
from gateway.store.db import make_async_engine, make_sessionmaker

if TYPE_CHECKING:
    from gateway.reconciler import Reconciler


@dataclass
class GatewayState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    dispatcher: Dispatcher
    auth: Authenticator
    # SQLite has no row locks: one writer task at a time inside this process (the reconciler's tick or a refresh).
    local_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reconciler: Reconciler = field(init=False)
    # Course contents/backends/members for the submit path (see gateway.store.catalog_cache).
    catalog: CatalogCache = field(default_factory=lambda: CatalogCache(0.0))

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @classmethod
    def build(cls, settings: Settings, dispatcher: Dispatcher | None = None) -> GatewayState:
        from gateway.reconciler import Reconciler

        engine = make_async_engine(settings)
        state = cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            dispatcher=dispatcher or Dispatcher(settings),
            auth=Authenticator(settings.gateway_auth_cache_seconds),
            catalog=CatalogCache(settings.gateway_catalog_cache_seconds),
        )
        state.reconciler = Reconciler(state)
        return state

    async def close(self) -> None:
        self.dispatcher.close()
        await self.engine.dispose()
