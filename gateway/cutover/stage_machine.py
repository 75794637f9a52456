"""The stage machine: every change to a migration goes through `plan_change`, which validates and versions it.

Changes are plain data in, plain data out: `plan_change` never touches a store, so a dry run is the same call
without saving its result. Rules:

- promote: one step forward. SHADOW → CANARY at the first canary step; CANARY moves through the canary steps
  (5 → 25 → 50 → 100 by default) and after the last one to NEW_PRIMARY; NEW_PRIMARY → NEW_ONLY.
- demote: one stage back (CANARY at any percentage → SHADOW; NEW_PRIMARY → CANARY at the widest step below
  100 %; NEW_ONLY → NEW_PRIMARY). What a Failed gate does in CANARY and NEW_PRIMARY.
- rollback: straight back to an earlier stage, OLD_ONLY unless told otherwise; one call.
- set: any stage with its percentage (only CANARY takes one; the others imply 0 or 100).
- configure: the other fields (policy, shadow fraction, steps, thresholds, minimum time, salt). The salt cannot
  change while members are split between engines (CANARY), since that would move members across.

Jobs already admitted are never affected by any of this: a leg carries its engine (pinning, property 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.cutover.stages import PARITY_FIELDS, AnswerPolicy, CutoverConfig, GateThresholds, Policy, Stage


class Action(StrEnum):
    SET = "set"
    PROMOTE = "promote"
    DEMOTE = "demote"
    ROLLBACK = "rollback"
    CONFIGURE = "configure"


class InvalidChange(ValueError):
    """A change the machine refuses; the message says why (the API answers 422 with it)."""


@dataclass(frozen=True)
class Change:
    """A validated change: the config before and after, and which fields differ (empty: nothing to do)."""

    action: Action
    before: CutoverConfig
    after: CutoverConfig
    reason: str

    @property
    def changed(self) -> dict[str, tuple[Any, Any]]:
        before, after = self.before.to_dict(), self.after.to_dict()
        skip = {"version", "stage_since"}
        return {k: (before[k], after[k]) for k in before if k not in skip and before[k] != after[k]}

    @property
    def is_noop(self) -> bool:
        """Nothing differs. Never true for a migration's first change (version 0): creating it is the change."""
        return self.before.version > 0 and not self.changed


def implied_percentage(stage: Stage, percentage: float | None) -> float:
    """The share of members the new engine answers for in a stage."""
    if stage in (Stage.OLD_ONLY, Stage.SHADOW):
        return 0.0
    if stage in (Stage.NEW_PRIMARY, Stage.NEW_ONLY):
        return 100.0
    if percentage is None or not 0 < percentage <= 100:
        raise InvalidChange("canary needs a percentage above 0 and at most 100")
    return round(float(percentage), 2)


def validate(config: CutoverConfig) -> None:
    if not config.old_engine or not config.new_engine:
        raise InvalidChange("a migration names its old and its new engine")
    if config.old_engine == config.new_engine:
        raise InvalidChange("old and new engine are the same")
    if not 0 <= config.shadow_fraction <= 1:
        raise InvalidChange("shadow_fraction must be within 0..1")
    steps = config.canary_steps
    if not steps or any(not 0 < s <= 100 for s in steps) or any(a >= b for a, b in zip(steps, steps[1:], strict=False)):
        raise InvalidChange("canary_steps must be increasing percentages within (0, 100]")
    if config.min_stage_seconds < 0:
        raise InvalidChange("min_stage_seconds must not be negative")
    t = config.thresholds
    if t.min_samples < 1:
        raise InvalidChange("min_samples must be at least 1")
    if not (0 <= t.max_mismatch_rate <= 1 and 0 <= t.max_infra_error_rate <= 1):
        raise InvalidChange("rates must be within 0..1")
    if t.max_p99_ratio <= 0:
        raise InvalidChange("max_p99_ratio must be positive")
    if not 0.5 <= t.confidence < 1:
        raise InvalidChange("confidence must be within [0.5, 1)")
    if t.start_timeout_seconds <= 0:
        raise InvalidChange("start_timeout_seconds must be positive")
    unknown = sorted(set(t.parity) - set(PARITY_FIELDS))
    if unknown:
        raise InvalidChange(f"parity fields unknown: {', '.join(unknown)} (known: {', '.join(PARITY_FIELDS)})")
    if implied_percentage(config.stage, config.percentage) != config.percentage:
        implied = implied_percentage(config.stage, config.percentage)
        raise InvalidChange(f"stage {config.stage.value} implies a percentage of {implied:g}")


def _promoted(config: CutoverConfig) -> tuple[Stage, float]:
    if config.stage == Stage.OLD_ONLY:
        return Stage.SHADOW, 0.0
    if config.stage == Stage.SHADOW:
        return Stage.CANARY, config.canary_steps[0]
    if config.stage == Stage.CANARY:
        wider = [s for s in config.canary_steps if s > config.percentage]
        return (Stage.CANARY, wider[0]) if wider else (Stage.NEW_PRIMARY, 100.0)
    if config.stage == Stage.NEW_PRIMARY:
        return Stage.NEW_ONLY, 100.0
    raise InvalidChange("new_only is the last stage: nothing to promote to")


def _demoted(config: CutoverConfig) -> tuple[Stage, float]:
    if config.stage == Stage.NEW_ONLY:
        return Stage.NEW_PRIMARY, 100.0
    if config.stage == Stage.NEW_PRIMARY:
        below = [s for s in config.canary_steps if s < 100]
        return Stage.CANARY, below[-1] if below else config.canary_steps[-1]
    if config.stage == Stage.CANARY:
        return Stage.SHADOW, 0.0
    if config.stage == Stage.SHADOW:
        return Stage.OLD_ONLY, 0.0
    raise InvalidChange("old_only is the first stage: nothing to demote to")


CONFIGURABLE = {"policy", "answer_policy", "shadow_fraction", "canary_steps", "min_stage_seconds", "thresholds", "salt"}


def plan_change(
    config: CutoverConfig,
    action: Action,
    now: datetime,
    reason: str = "",
    stage: Stage | None = None,
    percentage: float | None = None,
    **settings: Any,
) -> Change:
    """Validate one change and return the config it leads to (version + 1, `stage_since` reset on a stage change).

    `stage`/`percentage` are for SET (and ROLLBACK's target); `settings` for CONFIGURE.
    """
    if action == Action.PROMOTE:
        new_stage, new_pct = _promoted(config)
    elif action == Action.DEMOTE:
        new_stage, new_pct = _demoted(config)
    elif action == Action.ROLLBACK:
        new_stage = stage or Stage.OLD_ONLY
        if new_stage.rank >= config.stage.rank:
            raise InvalidChange(f"rollback goes back: {new_stage.value} is not before {config.stage.value}")
        new_pct = implied_percentage(new_stage, percentage if percentage is not None else config.canary_steps[0])
    elif action == Action.SET:
        if stage is None:
            raise InvalidChange("set needs a stage")
        new_stage, new_pct = stage, implied_percentage(stage, percentage)
    elif action == Action.CONFIGURE:
        new_stage, new_pct = config.stage, config.percentage
    else:  # pragma: no cover - the enum is exhaustive
        raise InvalidChange(f"unknown action {action}")
    unknown = set(settings) - CONFIGURABLE
    if unknown:
        raise InvalidChange(f"not configurable: {', '.join(sorted(unknown))}")
    values = {k: v for k, v in settings.items() if v is not None}
    if "policy" in values:
        values["policy"] = Policy(values["policy"])
    if "answer_policy" in values:
        try:
            values["answer_policy"] = AnswerPolicy(values["answer_policy"])
        except ValueError:
            raise InvalidChange("answer_policy must be primary or verified") from None
    if "canary_steps" in values:
        values["canary_steps"] = tuple(float(s) for s in values["canary_steps"])
    if isinstance(values.get("thresholds"), dict):
        merged = {**config.thresholds.to_dict(), **values["thresholds"]}
        values["thresholds"] = GateThresholds.from_dict(merged)
    if "salt" in values and values["salt"] != config.salt and Stage.CANARY in (config.stage, new_stage):
        raise InvalidChange("the salt cannot change in canary: it would move members between engines")
    after = config.with_changes(stage=new_stage, percentage=new_pct, **values)
    validate(after)
    change = Change(action=action, before=config, after=after, reason=reason)
    if change.is_noop:
        return change
    moved = (new_stage, new_pct) != (config.stage, config.percentage)
    return Change(
        action=action,
        before=config,
        after=after.with_changes(
            version=config.version + 1,
            # The minimum time counts per stage *and* canary step.
            stage_since=now if moved or config.stage_since is None else config.stage_since,
        ),
        reason=reason,
    )
