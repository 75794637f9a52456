"""The stages of a migration and the configuration of one migration (per backend, or a course's override).

A migration moves a backend (or one course content) from `old_engine` to `new_engine`; the names are engine
names, so the same machinery serves Prefect → Celery, the reverse, and a later engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.cutover.confidence import DEFAULT_CONFIDENCE


class Stage(StrEnum):
    """In order. Who answers, and who shadows:

    - OLD_ONLY: the old engine answers; nothing else runs (today's behaviour).
    - SHADOW: the old engine answers; the new one shadows a sampled fraction of jobs.
    - CANARY: the new engine answers for a sticky percentage of members; the old one shadows them.
    - NEW_PRIMARY: the new engine answers for everyone; the old one may still shadow a fraction.
    - NEW_ONLY: the new engine answers; nothing else runs.
    """

    OLD_ONLY = "old_only"
    SHADOW = "shadow"
    CANARY = "canary"
    NEW_PRIMARY = "new_primary"
    NEW_ONLY = "new_only"

    @property
    def rank(self) -> int:
        return STAGE_ORDER.index(self)


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)


class Policy(StrEnum):
    """`manual`: evaluations recommend, an operator promotes. `auto`: a Successful evaluation promotes.

    In both, a Failed evaluation in `canary` or `new_primary` demotes (the new engine is answering students).
    """

    MANUAL = "manual"
    AUTO = "auto"


class AnswerPolicy(StrEnum):
    """Who answers a job that both engines run while the new engine answers some students (CANARY).

    - PRIMARY: the answering engine's grade is written as soon as it has one (the stage's primary answers).
    - VERIFIED: the row waits for both: if they agree, as PRIMARY; if they disagree, the OLD engine's grade is
      written (Scientist's rule: the control answers) and the disagreement is a comparison the gate sees; if the
      old engine misses its deadline, the new engine's grade is written, marked unverified.
    """

    PRIMARY = "primary"
    VERIFIED = "verified"


class Scope(StrEnum):
    """A migration is set for a whole execution backend, or for one course content (which then wins)."""

    BACKEND = "backend"
    CONTENT = "content"


# The environment fields (gateway/compare/environment.py) a migration requires equal on both engines unless told
# otherwise: everything a grade can depend on. `process` (a warm or a cold start) is shown but not required.
DEFAULT_PARITY: tuple[str, ...] = ("python", "pytest", "distributions", "isolation", "limits")
_LIMITS = (
    "time_seconds", "cpu_seconds", "cpu_tolerance", "wall_seconds", "memory_mb", "run_memory_mb", "processes", "file_mb"
)  # fmt: skip
PARITY_FIELDS: tuple[str, ...] = (
    "python", "pytest", "distributions", "isolation", "process", "runner", "limits", *(f"limits.{x}" for x in _LIMITS)
)  # fmt: skip
BUCKETS = 10_000
DEFAULT_CANARY_STEPS: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)


@dataclass(frozen=True)
class GateThresholds:
    """What a gate needs before it lets a stage move forward (and what makes it demote)."""

    # A floor: no rate is judged on fewer comparisons (the interval decides, this only keeps tiny samples out).
    min_samples: int = 100
    max_mismatch_rate: float = 0.01  # noise-adjusted, accepted clusters excluded
    max_infra_error_rate: float = 0.02  # of the new engine's legs
    max_p99_ratio: float = 1.5  # the new engine's p99 run time over the old one's
    # The level of every rate's interval (gateway.cutover.confidence): how sure a Successful or Failed is.
    confidence: float = DEFAULT_CONFIDENCE
    # Environment fields that must be equal on both legs: one comparison showing a difference fails the gate.
    parity: tuple[str, ...] = DEFAULT_PARITY
    # A new-engine leg sent this long ago and not started, while the engine reports no live worker, is a dead
    # engine: the gate fails on it at once, whatever the shadow deadline.
    start_timeout_seconds: float = 20.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_samples": self.min_samples,
            "max_mismatch_rate": self.max_mismatch_rate,
            "max_infra_error_rate": self.max_infra_error_rate,
            "max_p99_ratio": self.max_p99_ratio,
            "confidence": self.confidence,
            "parity": list(self.parity),
            "start_timeout_seconds": self.start_timeout_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GateThresholds:
        data = data or {}
        default = cls()
        return cls(
            min_samples=int(data.get("min_samples", default.min_samples)),
            max_mismatch_rate=float(data.get("max_mismatch_rate", default.max_mismatch_rate)),
            max_infra_error_rate=float(data.get("max_infra_error_rate", default.max_infra_error_rate)),
            max_p99_ratio=float(data.get("max_p99_ratio", default.max_p99_ratio)),
            confidence=float(data.get("confidence", default.confidence)),
            parity=tuple(str(f) for f in data.get("parity", default.parity)),
            start_timeout_seconds=float(data.get("start_timeout_seconds", default.start_timeout_seconds)),
        )


@dataclass(frozen=True)
class CutoverConfig:
    """One migration's configuration; `version` grows by one with every accepted change."""

    scope: Scope
    scope_id: str
    old_engine: str
    new_engine: str
    stage: Stage = Stage.OLD_ONLY
    # Percent of members (0..100, two decimals: 10,000 buckets) the new engine answers for in CANARY.
    percentage: float = 0.0
    # Fraction of jobs (0..1) the non-answering engine shadows in SHADOW, CANARY and NEW_PRIMARY.
    shadow_fraction: float = 1.0
    policy: Policy = Policy.MANUAL
    # How a canary job's row is written (AnswerPolicy); applies where the new engine answers with the old shadowing.
    answer_policy: AnswerPolicy = AnswerPolicy.VERIFIED
    canary_steps: tuple[float, ...] = DEFAULT_CANARY_STEPS
    min_stage_seconds: float = 3600.0
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    # Part of the bucket hash: a new salt reshuffles which members are in the canary.
    salt: str = ""
    version: int = 0
    stage_since: datetime | None = None

    def with_changes(self, **changes: Any) -> CutoverConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope.value,
            "scope_id": self.scope_id,
            "old_engine": self.old_engine,
            "new_engine": self.new_engine,
            "stage": self.stage.value,
            "percentage": self.percentage,
            "shadow_fraction": self.shadow_fraction,
            "policy": self.policy.value,
            "answer_policy": self.answer_policy.value,
            "canary_steps": list(self.canary_steps),
            "min_stage_seconds": self.min_stage_seconds,
            "thresholds": self.thresholds.to_dict(),
            "salt": self.salt,
            "version": self.version,
            "stage_since": self.stage_since.isoformat() if self.stage_since else None,
        }
