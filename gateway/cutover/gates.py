"""Gates: an evaluation of one migration over a window of comparison evidence, and what the policy does next.

Criteria, in the order they decide (Flagger/Argo's Successful / Failed / Inconclusive):
1. samples: at least `min_samples` comparable comparisons (match or mismatch), else Inconclusive - unless the
   new engine already has `min_samples` legs and too many infra errors among them (an engine that stopped gives
   no comparable sample at all): Failed on the infra-error rate;
2. mismatch rate after noise (mismatches on flaky tests only) and accepted clusters, at most the threshold;
3. the new engine's infra-error rate (its legs that crashed, were lost, timed out...), at most the threshold;
4. the new engine's p99 run time within `max_p99_ratio` of the old engine's.
A Failed evaluation names the first failing criterion and lists every failing one; every evaluation lists what
the next gate still needs, in words an operator can act on ("12 more comparisons", "mismatch rate 3.1 % > 1 %").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.cutover.stages import CutoverConfig, GateThresholds, Policy, Stage


class Verdict(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


class Criterion(StrEnum):
    SAMPLES = "samples"
    MISMATCH_RATE = "mismatch_rate"
    INFRA_ERROR_RATE = "infra_error_rate"
    P99_RATIO = "p99_ratio"
    ALL = "all"  # every criterion passed


@dataclass(frozen=True)
class Evidence:
    """Counts over a window of comparisons of one migration (the store gathers them, this module judges)."""

    comparable: int = 0  # match + mismatch
    mismatches: int = 0  # every mismatch (raw)
    noise_mismatches: int = 0  # mismatches that involve only flaky tests
    accepted_mismatches: int = 0  # mismatches in clusters an admin accepted (not expired)
    new_legs: int = 0  # the new engine's finished legs in the window
    new_infra_errors: int = 0
    old_legs: int = 0
    old_infra_errors: int = 0
    old_p99_seconds: float | None = None
    new_p99_seconds: float | None = None

    @property
    def real_mismatches(self) -> int:
        return max(0, self.mismatches - self.noise_mismatches - self.accepted_mismatches)

    @property
    def raw_mismatch_rate(self) -> float | None:
        return self.mismatches / self.comparable if self.comparable else None

    @property
    def mismatch_rate(self) -> float | None:
        """Noise-adjusted, accepted clusters excluded: what the gate judges."""
        return self.real_mismatches / self.comparable if self.comparable else None

    @property
    def new_infra_error_rate(self) -> float | None:
        return self.new_infra_errors / self.new_legs if self.new_legs else None

    @property
    def old_infra_error_rate(self) -> float | None:
        return self.old_infra_errors / self.old_legs if self.old_legs else None

    @property
    def p99_ratio(self) -> float | None:
        if not self.old_p99_seconds or self.new_p99_seconds is None:
            return None
        return self.new_p99_seconds / self.old_p99_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "comparable": self.comparable,
            "mismatches": self.mismatches,
            "noise_mismatches": self.noise_mismatches,
            "accepted_mismatches": self.accepted_mismatches,
            "raw_mismatch_rate": self.raw_mismatch_rate,
            "mismatch_rate": self.mismatch_rate,
            "new_legs": self.new_legs,
            "new_infra_errors": self.new_infra_errors,
            "new_infra_error_rate": self.new_infra_error_rate,
            "old_legs": self.old_legs,
            "old_infra_errors": self.old_infra_errors,
            "old_infra_error_rate": self.old_infra_error_rate,
            "old_p99_seconds": self.old_p99_seconds,
            "new_p99_seconds": self.new_p99_seconds,
            "p99_ratio": self.p99_ratio,
        }


@dataclass(frozen=True)
class Evaluation:
    verdict: Verdict
    decided_by: Criterion
    failing: tuple[Criterion, ...] = ()
    needs: tuple[str, ...] = ()
    evidence: Evidence = field(default_factory=Evidence)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "decided_by": self.decided_by.value,
            "failing": [c.value for c in self.failing],
            "needs": list(self.needs),
            "evidence": self.evidence.to_dict(),
        }


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f} %".replace(".0 %", " %")


def evaluate(evidence: Evidence, thresholds: GateThresholds) -> Evaluation:
    """Pure and total: any evidence gives a verdict, the deciding criterion, and what is still needed."""
    infra = evidence.new_infra_error_rate or 0.0
    infra_need = f"new engine infra-error rate {_pct(infra)} > {_pct(thresholds.max_infra_error_rate)}"
    missing = thresholds.min_samples - evidence.comparable
    if missing > 0:
        # A new engine that stopped gives no comparable sample at all (every leg of it an infra error or a
        # timeout): waiting for samples would never demote it. Its legs alone decide once there are enough.
        if evidence.new_legs >= thresholds.min_samples and infra > thresholds.max_infra_error_rate:
            failing_infra = (Criterion.INFRA_ERROR_RATE,)
            return Evaluation(Verdict.FAILED, Criterion.INFRA_ERROR_RATE, failing_infra, (infra_need,), evidence)
        noun = "comparison" if missing == 1 else "comparisons"
        return Evaluation(Verdict.INCONCLUSIVE, Criterion.SAMPLES, (), (f"{missing} more {noun}",), evidence)
    failing: list[Criterion] = []
    needs: list[str] = []
    rate = evidence.mismatch_rate or 0.0
    if rate > thresholds.max_mismatch_rate:
        failing.append(Criterion.MISMATCH_RATE)
        needs.append(f"mismatch rate {_pct(rate)} > {_pct(thresholds.max_mismatch_rate)}")
    if infra > thresholds.max_infra_error_rate:
        failing.append(Criterion.INFRA_ERROR_RATE)
        needs.append(infra_need)
    ratio = evidence.p99_ratio
    if ratio is None:
        if not failing:
            return Evaluation(Verdict.INCONCLUSIVE, Criterion.P99_RATIO, (), ("run times from both engines",), evidence)
    elif ratio > thresholds.max_p99_ratio:
        failing.append(Criterion.P99_RATIO)
        needs.append(f"p99 run time ratio {ratio:.2f}× > {thresholds.max_p99_ratio:.2f}×")
    if failing:
        return Evaluation(Verdict.FAILED, failing[0], tuple(failing), tuple(needs), evidence)
    return Evaluation(Verdict.SUCCESSFUL, Criterion.ALL, (), (), evidence)


class Step(StrEnum):
    """What the policy does after an evaluation."""

    PROMOTE = "promote"
    DEMOTE = "demote"
    HOLD = "hold"
    # MANUAL policy, gate Successful and the minimum time served: an operator may promote.
    RECOMMEND_PROMOTE = "recommend_promote"


@dataclass(frozen=True)
class Next:
    step: Step
    why: str


# Stages where the new engine answers students: a Failed gate there demotes in every policy.
ANSWERING = (Stage.CANARY, Stage.NEW_PRIMARY)


def next_step(config: CutoverConfig, evaluation: Evaluation | None, now: datetime) -> Next:
    """Failed in CANARY/NEW_PRIMARY → demote (any policy). AUTO: Successful and the minimum time served → promote.

    OLD_ONLY has no evidence to wait for (nothing is compared yet), so AUTO starts it into SHADOW after the
    minimum time; NEW_ONLY is the end.
    """
    if evaluation is not None and evaluation.verdict == Verdict.FAILED and config.stage in ANSWERING:
        return Next(Step.DEMOTE, f"gate Failed on {evaluation.decided_by.value}: {'; '.join(evaluation.needs)}")
    if config.stage == Stage.NEW_ONLY:
        return Next(Step.HOLD, "new_only is the last stage")
    waited = (now - config.stage_since).total_seconds() if config.stage_since else float("inf")
    if config.stage != Stage.OLD_ONLY and (evaluation is None or evaluation.verdict != Verdict.SUCCESSFUL):
        verdict = evaluation.verdict.value if evaluation else "not evaluated"
        needs = "; ".join(evaluation.needs) if evaluation and evaluation.needs else ""
        return Next(Step.HOLD, f"gate {verdict}" + (f": {needs}" if needs else ""))
    if waited < config.min_stage_seconds:
        return Next(Step.HOLD, f"{config.min_stage_seconds - waited:.0f} s more in this stage")
    if config.policy != Policy.AUTO:
        return Next(Step.RECOMMEND_PROMOTE, "manual policy: the gate allows a promotion")
    return Next(Step.PROMOTE, "gate Successful" if config.stage != Stage.OLD_ONLY else "auto policy starts shadowing")


def still_needs(config: CutoverConfig, evaluation: Evaluation | None, now: datetime) -> list[str]:
    """The scorecard's "what the next gate still needs": the gate's needs plus the minimum time left."""
    needs = list(evaluation.needs) if evaluation else ["an evaluation"]
    if config.stage_since is not None:
        left = config.min_stage_seconds - (now - config.stage_since).total_seconds()
        if left > 0:
            needs.append(f"{left:.0f} s more in this stage")
    return needs
