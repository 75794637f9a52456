"""Routing: which engine a job goes to (`execution_backend.type` + cutover stage → a `RoutePlan`), task names.

With no migration set for the backend or the course content, the plan is the backend's engine alone, exactly
the legacy behaviour. With one, `gateway.cutover.decide` picks the answering engine (sticky per member in a
canary) and the engine that may shadow; its record (stage, percentage, bucket, rule, config version) is the
leg's `routing`. Pinning: only *new* jobs are planned here; a leg keeps the engine it was admitted to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backends.interface import TaskKind
from backends.registry import UnknownEngineError, canonical_engine
from gateway.cutover.decide import decide
from gateway.cutover.stages import CutoverConfig

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
    """Which engine answers (primary), which may shadow (sampled per job at `shadow_fraction`), and why."""

    primary: str
    shadow: str | None = None
    shadow_fraction: float = 0.0
    decision: dict[str, Any] = field(default_factory=dict)


def plan_route(
    backend_type: str | None,
    backend_id: str | None = None,
    cutover: CutoverConfig | None = None,
    content_id: str = "",
    member_id: str = "",
) -> RoutePlan:
    """`cutover` is the effective migration of the job's content (its override, else its backend's), or None."""
    try:
        engine = canonical_engine(backend_type or "")
    except UnknownEngineError:
        raise UnsupportedBackend(UNSUPPORTED) from None
    decision = {"type": backend_type, "execution_backend_id": backend_id}
    routed = decide(cutover, engine, content_id, member_id)
    return RoutePlan(
        primary=routed.primary,
        shadow=routed.shadow,
        shadow_fraction=routed.shadow_fraction,
        decision={**routed.record, **decision},
    )
