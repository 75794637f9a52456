"""Alembic glue: upgrade to head, and tell whether a database is at head (the API refuses to start otherwise)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from common.redact import redact_url
from common.settings import Settings
from gateway.store.db import make_sync_engine

# The checkout's top-level `migrations/`, installed as the package `gateway_migrations` (pyproject's package-dir):
# found by that name, so a non-editable install (the Docker image) finds its own copy.
MIGRATIONS = Path(str(importlib.resources.files("gateway_migrations")))


class SchemaOutOfDate(RuntimeError):
    """The database is not at the newest migration; the message is a one-line hint."""


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # env.py takes the engine from here, so no URL (and no password) passes through alembic's ini interpolation.
    cfg.attributes["settings"] = settings
    return cfg


def head_revision(settings: Settings) -> str | None:
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def current_revision_of(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(settings: Settings, revision: str = "head") -> None:
    engine = make_sync_engine(settings)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(settings)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def check_schema(settings: Settings) -> None:
    """Raise `SchemaOutOfDate` unless the database is at head."""
    engine = make_sync_engine(settings)
    try:
        with engine.connect() as conn:
            current = current_revision_of(conn)
    finally:
        engine.dispose()
    head = head_revision(settings)
    if current != head:
        where = redact_url(settings.database_url())
        raise SchemaOutOfDate(
            f"database {where} is at revision {current or 'none'}, the gateway needs {head}: run `gateway db upgrade`"
        )


def ensure_schema(settings: Settings) -> None:
    """The embedded default upgrades itself; a production database must be upgraded by an operator."""
    if settings.uses_embedded_database and settings.gateway_database_url is None:
        upgrade(settings)
        return
    check_schema(settings)
