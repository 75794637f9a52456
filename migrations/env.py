"""Alembic environment: the URL comes from common.settings, never from alembic.ini."""

from __future__ import annotations

from alembic import context

from common.settings import get_settings
from gateway.store.db import make_sync_engine
from gateway.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    settings = config.attributes.get("settings") or get_settings()
    engine = make_sync_engine(settings)
    try:
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    settings = config.attributes.get("settings") or get_settings()
    context.configure(url=settings.database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
