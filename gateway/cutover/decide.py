"""Where one new job goes under a migration's config: which engine answers, which may shadow, and why.

The decision record is stored on the leg (`leg.routing`) so an audit or the scorecard can replay it: the stage,
the percentage, the member's bucket, the rule that applied and the config version that decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.cutover.buckets import bucket, in_canary
from gateway.cutover.stages import AnswerPolicy, CutoverConfig, Stage


class Rule(StrEnum):
    """Which rule picked the engines; recorded verbatim."""

    LEGACY = "execution_backend.type"  # no migration: the backend's type names the engine (today's behaviour)
    OLD_ONLY = "stage:old_only"
    SHADOW = "stage:shadow"
    CANARY_IN = "stage:canary:in_bucket"
    CANARY_OUT = "stage:canary:out_of_bucket"
    NEW_PRIMARY = "stage:new_primary"
    NEW_ONLY = "stage:new_only"


@dataclass(frozen=True)
class RouteDecision:
    primary: str
    # The engine that may shadow this job, and the fraction of such jobs it shadows (sampled per job).
    shadow: str | None
    shadow_fraction: float
    rule: Rule
    record: dict[str, Any]


def decide(config: CutoverConfig | None, legacy_engine: str, content_id: str, member_id: str) -> RouteDecision:
    """Pure: the same inputs give the same answer in every process (no clock, no randomness)."""
    if config is None:
        return RouteDecision(legacy_engine, None, 0.0, Rule.LEGACY, {"rule": Rule.LEGACY.value})
    old, new, fraction = config.old_engine, config.new_engine, config.shadow_fraction
    # Recorded in every stage, so an audit sees where a member would fall if the stage became canary.
    member_bucket = bucket(config.salt, content_id, member_id)
    if config.stage == Stage.OLD_ONLY:
        primary, shadow, fraction, rule = old, None, 0.0, Rule.OLD_ONLY
    elif config.stage == Stage.SHADOW:
        primary, shadow, rule = old, new, Rule.SHADOW
    elif config.stage == Stage.CANARY:
        if in_canary(member_bucket, config.percentage):
            primary, shadow, rule = new, old, Rule.CANARY_IN
        else:
            primary, shadow, rule = old, new, Rule.CANARY_OUT
    elif config.stage == Stage.NEW_PRIMARY:
        primary, shadow, rule = new, old, Rule.NEW_PRIMARY
    else:
        primary, shadow, fraction, rule = new, None, 0.0, Rule.NEW_ONLY
    if fraction <= 0:
        shadow = None
    record: dict[str, Any] = {
        "rule": rule.value,
        "stage": config.stage.value,
        "percentage": config.percentage,
        "bucket": member_bucket,
        "config_scope": config.scope.value,
        "config_scope_id": config.scope_id,
        "config_version": config.version,
        "old_engine": old,
        "new_engine": new,
        "shadow_engine": shadow,
        "shadow_fraction": fraction if shadow else 0.0,
    }
    if rule == Rule.CANARY_IN and shadow and config.answer_policy == AnswerPolicy.VERIFIED:
        # The new engine answers, the old one shadows: the row waits for both (gateway.compare.answer).
        record["answer"] = AnswerPolicy.VERIFIED.value
    return RouteDecision(primary, shadow, fraction if shadow else 0.0, rule, record)
