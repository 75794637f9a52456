"""Build an engine adapter by engine name, importing the engine's module only when asked for.

The gateway asks for `"celery"` or `"prefect"` (legacy alias `"prefect_builtin"`) and receives an
`EngineAdapter`; it never imports Celery or Prefect itself.
"""

from __future__ import annotations

from backends.interface import EngineAdapter
from common.settings import Settings, get_settings

ENGINE_ALIASES = {"celery": "celery", "prefect": "prefect", "prefect_builtin": "prefect"}


class UnknownEngineError(ValueError):
    pass


def canonical_engine(engine_type: str) -> str:
    try:
        return ENGINE_ALIASES[engine_type]
    except KeyError:
        raise UnknownEngineError(f"execution_backend type not supported: {engine_type!r}") from None


def make_adapter(engine_type: str, settings: Settings | None = None) -> EngineAdapter:
    settings = settings or get_settings()
    engine = canonical_engine(engine_type)
    if engine == "celery":
        from backends.celery.adapter import CeleryAdapter

        return CeleryAdapter(settings)
    from backends.prefect.adapter import PrefectAdapter

    return PrefectAdapter(settings)
