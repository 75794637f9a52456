"""Routing: which engine a job goes to (`execution_backend.type` → a `RoutePlan`), and the legacy task names.

`RoutePlan` is the seam for shadow runs and cutover stages: today the plan is the backend's engine alone; a
stage will add a shadow engine and record its rule in `decision` (stored on the leg as its routing decision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backends.interface import TaskKind
from backends.registry import UnknownEngineError, canonical_engine

UNSUPPORTED = "execution_backend type not supported!"

# Task names of the legacy contract (the Celery era's `/api/tasks` family), accepted short or in full.
TASK_NAMES: dict[str, TaskKind] = {
    "ctutor_backend.tasks.student_testing": TaskKind.STUDENT_TESTING,
    "ctutor_backend.tasks.submission_processing": TaskKind.SUBMISSION_PROCESSING,
}
_SHORT = {name.rsplit(".", 1)[1]: kind for name, kind in TASK_NAMES.items()}
# What `GET /api/tasks/types` answers: the platform's task registry listed its short names (`student_testing`).
TASK_TYPES: list[str] = sorted(_SHORT)


def task_kind(task_name: str) -> TaskKind | None:
    return TASK_NAMES.get(task_name) or _SHORT.get(task_name)


def task_name_of(kind: TaskKind) -> str:
    return next(name for name, k in TASK_NAMES.items() if k == kind)


class UnsupportedBackend(ValueError):
    """The execution backend's type names no engine; the API answers 400 with the legacy text."""


@dataclass(frozen=True)
class RoutePlan:
    """Which engine answers (primary) and, later, which one shadows; `decision` is recorded on the leg."""

    primary: str
    shadow: str | None = None
    decision: dict[str, Any] = field(default_factory=dict)


def plan_route(backend_type: str | None, backend_id: str | None = None) -> RoutePlan:
    try:
        engine = canonical_engine(backend_type or "")
    except UnknownEngineError:
        raise UnsupportedBackend(UNSUPPORTED) from None
    return RoutePlan(
        primary=engine,
        decision={"rule": "execution_backend.type", "type": backend_type, "execution_backend_id": backend_id},
    )
