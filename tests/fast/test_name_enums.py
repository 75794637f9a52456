"""Engine names and roles are enums whose values are the wire's and the store's strings, unchanged.

Rows, catalogs and clients written before the enums spell them as plain strings; a renamed value would split
them from the code. The legacy catalog alias `prefect_builtin` still means Prefect."""

from __future__ import annotations

import pytest

from backends.memory.adapter import MemoryAdapter
from backends.registry import ENGINE_ALIASES, UnknownEngineError, canonical_engine
from common.engines import Engine
from gateway.schemas import ROLES, Role, UserIn
from gateway.store.accounts import Principal

pytestmark = pytest.mark.fast


def test_engine_values_are_the_stored_strings() -> None:
    assert [e.value for e in Engine] == ["celery", "prefect", "memory"]
    assert Engine.CELERY == "celery" and f"{Engine.PREFECT}" == "prefect"
    assert {"celery": 1}[Engine.CELERY] == 1  # a dict keyed by the plain string finds the member


def test_catalog_types_map_to_engines() -> None:
    assert canonical_engine("celery") is Engine.CELERY
    assert canonical_engine("prefect_builtin") is Engine.PREFECT
    assert set(ENGINE_ALIASES.values()) == {Engine.CELERY, Engine.PREFECT}  # memory is never a catalog type
    with pytest.raises(UnknownEngineError):
        canonical_engine("kubernetes")


def test_the_memory_adapter_is_named_by_the_enum() -> None:
    assert MemoryAdapter().engine == Engine.MEMORY


def test_role_values_are_the_stored_strings() -> None:
    assert ROLES == (Role.ADMIN, Role.WORKER, Role.STUDENT) == ("admin", "worker", "student")
    assert UserIn(username="u", password="p").role == "student"
    with pytest.raises(ValueError, match="role must be one of admin, worker, student"):
        UserIn(username="u", password="p", role="tutor")
    assert Principal("id", "u", "admin").is_admin and not Principal("id", "u", Role.WORKER).is_admin
