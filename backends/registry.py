"""Build an engine adapter by engine name, importing the engine's module only when asked for.

The gateway asks for an `Engine` (or a catalog `type`: `"celery"`, `"prefect"`, the legacy alias
`"prefect_builtin"`) and receives an `EngineAdapter`; it never imports Celery or Prefect itself.
"""

from __future__ import annotations

from backends.interface import EngineAdapter
from common.engines import Engine
from common.settings import Settings, get_settings

# A catalog backend's `type` → the engine that runs it.
ENGINE_ALIASES: dict[str, Engine] = {
    Engine.CELERY: Engine.CELERY,
    Engine.PREFECT: Engine.PREFECT,
    "prefect_builtin": Engine.PREFECT,
}


class UnknownEngineError(ValueError):
    pass


def canonical_engine(engine_type: str) -> Engine:
    try:
        return ENGINE_ALIASES[engine_type]
    except KeyError:
        raise UnknownEngineError(f"execution_backend type not supported: {engine_type!r}") from None


def make_adapter(engine_type: str, settings: Settings | None = None) -> EngineAdapter:
    settings = settings or get_settings()
    engine = canonical_engine(engine_type)
    if engine == Engine.CELERY:
        from backends.celery.adapter import CeleryAdapter

        return CeleryAdapter(settings)
    from backends.prefect.adapter import PrefectAdapter

    return PrefectAdapter(settings)
