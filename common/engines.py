"""The engines' names: one enum for the values the catalog, the store, the settings and the wire spell.

A `StrEnum`, so a member equals its string (`Engine.CELERY == "celery"`) and rows written before it still
match; code compares against the members, never against a bare "celery". The legacy alias `prefect_builtin`
(a catalog `type`) is not an engine: `backends.registry.canonical_engine` maps it to `Engine.PREFECT`.
"""

from __future__ import annotations

from enum import StrEnum


class Engine(StrEnum):
    CELERY = "celery"
    PREFECT = "prefect"
    # The fast layer's in-memory adapter (`backends/memory/`): never in a production catalog.
    MEMORY = "memory"
