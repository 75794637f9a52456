"""Gates: an evaluation of one migration over a window of comparison evidence, and what the policy does next.

Engines whose environments differ on a field the migration requires equal (`thresholds.parity`: limits,
versions, isolation by default) are Failed on `environment_parity` from the first comparison that shows it; a new
engine with legs sent and not started within `start_timeout_seconds` and no live worker is Failed on
`infra_error_rate` at once (a dead engine gives no comparison to count).
Each rate is judged by its confidence interval (`gateway.cutover.confidence`, Wilson, at the migration's
`confidence` level, 95 % by default), never by its point estimate (Flagger/Argo's Successful / Failed /
Inconclusive):
1. Failed as soon as a criterion's evidence is conclusive against the new engine, once there are `min_samples`
   to judge from: the lower bound of the (noise-adjusted, accepted clusters excluded) mismatch rate above its
   threshold; the lower bound of the new engine's infra-error rate (over its legs: an engine that stopped gives
   no comparable sample at all) above its threshold; the new engine's p99 run time over `max_p99_ratio` times
   the old one's;
2. Inconclusive while fewer than `min_samples` comparisons (a floor, not the decision), or while a rate's
   interval still contains its threshold - with how many more samples would decide at the current rate;
3. Successful when both intervals lie wholly below their thresholds and the p99 ratio is within bounds.
A Failed evaluation names the first failing criterion and lists every failing one; every evaluation lists what
the next gate still needs, in words an operator can act on ("mismatch 0 % (95 %: 0–3.7 %) includes 1 %:
about 281 more comparisons at this rate would decide").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.cutover.confidence import DEFAULT_CONFIDENCE, RateDecision, Side, decide_rate, pct
from gateway.cutover.hold import Hold
from gateway.cutover.stages import CutoverConfig, GateThresholds, Policy, Stage


class Verdict(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


class Criterion(StrEnum):
    PARITY = "environment_parity"
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
    # Comparisons whose legs' environments differ on a field the migration requires equal, and one in words.
    parity_breaks: int = 0
    parity_example: str | None = None
    # The new engine's legs sent longer than `start_timeout_seconds` ago and not started, and whether the engine
    # reports a live worker (None: not asked). Unstarted legs and no live worker: a dead engine, seen in seconds.
    new_unstarted: int = 0
    new_alive: bool | None = None

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
            "parity_breaks": self.parity_breaks,
            "parity_example": self.parity_example,
            "new_unstarted": self.new_unstarted,
            "new_alive": self.new_alive,
        }


@dataclass(frozen=True)
class Evaluation:
    verdict: Verdict
    decided_by: Criterion
    failing: tuple[Criterion, ...] = ()
    needs: tuple[str, ...] = ()
    evidence: Evidence = field(default_factory=Evidence)
    # Each judged rate with its interval, threshold and side (None only in an Evaluation built by hand).
    mismatch: RateDecision | None = None
    infra: RateDecision | None = None
    confidence: float = DEFAULT_CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "decided_by": self.decided_by.value,
            "failing": [c.value for c in self.failing],
            "needs": list(self.needs),
            "evidence": self.evidence.to_dict(),
            "confidence": self.confidence,
            "mismatch": self.mismatch.to_dict() if self.mismatch else None,
            "infra_error": self.infra.to_dict() if self.infra else None,
        }


def parity_required(field: str, parity: tuple[str, ...]) -> bool:
    """`limits` requires every `limits.*` field; a full name requires itself."""
    return any(field == p or field.startswith(f"{p}.") for p in parity)


def judge_rates(evidence: Evidence, thresholds: GateThresholds) -> tuple[RateDecision, RateDecision]:
    """The two rates a gate judges, each with its interval: the one source of every rate the surfaces show."""
    mismatch = decide_rate(
        evidence.real_mismatches, evidence.comparable, thresholds.max_mismatch_rate, thresholds.confidence
    )
    infra = decide_rate(
        evidence.new_infra_errors, evidence.new_legs, thresholds.max_infra_error_rate, thresholds.confidence
    )
    return mismatch, infra


def _above(decision: RateDecision, noun: str) -> str:
    return f"{decision.interval.describe(noun)} above {pct(decision.threshold)}"


def _undecided(decision: RateDecision, noun: str, samples: str) -> str:
    more = decision.more_trials
    at = "at this rate" if decision.interval.trials else "if none occur"
    wait = f"about {more} more {samples} {at} would decide" if more is not None else "it sits on the threshold"
    return f"{decision.interval.describe(noun)} includes {pct(decision.threshold)}: {wait}"


def evaluate(evidence: Evidence, thresholds: GateThresholds) -> Evaluation:
    """Pure and total: any evidence gives a verdict, the deciding criterion, and what is still needed."""
    mismatch, infra = judge_rates(evidence, thresholds)

    def result(verdict: Verdict, by: Criterion, failing: list[Criterion], needs: list[str]) -> Evaluation:
        return Evaluation(verdict, by, tuple(failing), tuple(needs), evidence, mismatch, infra, thresholds.confidence)

    floor = thresholds.min_samples
    failing: list[Criterion] = []
    needs: list[str] = []
    # Engines configured differently are named before any grade is compared: one comparison is enough.
    if evidence.parity_breaks:
        failing.append(Criterion.PARITY)
        noun = "comparison" if evidence.parity_breaks == 1 else "comparisons"
        needs.append(f"environments differ on {evidence.parity_breaks} {noun}: {evidence.parity_example or '?'}")
    if evidence.comparable >= floor and mismatch.side == Side.ABOVE:
        failing.append(Criterion.MISMATCH_RATE)
        needs.append(_above(mismatch, "mismatch"))
    # A dead engine gives no sample at all while the broker holds its messages: its unstarted legs and its
    # workers' liveness decide at once. A busy but alive engine (a Prefect runner or a Celery worker at its
    # limit) is waited for.
    if evidence.new_unstarted and evidence.new_alive is False:
        failing.append(Criterion.INFRA_ERROR_RATE)
        noun = "leg" if evidence.new_unstarted == 1 else "legs"
        needs.append(
            f"new engine dead: {evidence.new_unstarted} {noun} not started within "
            f"{thresholds.start_timeout_seconds:g} s and no live worker"
        )
    # An engine that stopped gives no comparable sample at all (every leg of it an infra error or a timeout):
    # its legs alone decide once there are enough of them.
    elif evidence.new_legs >= floor and infra.side == Side.ABOVE:
        failing.append(Criterion.INFRA_ERROR_RATE)
        needs.append(_above(infra, "new engine infra error"))
    ratio = evidence.p99_ratio
    if evidence.comparable >= floor and ratio is not None and ratio > thresholds.max_p99_ratio:
        failing.append(Criterion.P99_RATIO)
        needs.append(f"p99 run time ratio {ratio:.2f}× > {thresholds.max_p99_ratio:.2f}×")
    if failing:
        return result(Verdict.FAILED, failing[0], failing, needs)
    if evidence.comparable < floor:
        missing = floor - evidence.comparable
        noun = "comparison" if missing == 1 else "comparisons"
        return result(Verdict.INCONCLUSIVE, Criterion.SAMPLES, [], [f"{missing} more {noun}"])
    if mismatch.side != Side.BELOW:
        needs.append(_undecided(mismatch, "mismatch", "comparisons"))
    if infra.side != Side.BELOW:
        needs.append(_undecided(infra, "new engine infra error", "new-engine legs"))
    if needs:
        by = Criterion.MISMATCH_RATE if mismatch.side != Side.BELOW else Criterion.INFRA_ERROR_RATE
        return result(Verdict.INCONCLUSIVE, by, [], needs)
    if ratio is None:
        return result(Verdict.INCONCLUSIVE, Criterion.P99_RATIO, [], ["run times from both engines"])
    return result(Verdict.SUCCESSFUL, Criterion.ALL, [], [])


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


def next_step(config: CutoverConfig, evaluation: Evaluation | None, now: datetime, hold: Hold | None = None) -> Next:
    """Failed in CANARY/NEW_PRIMARY → demote (any policy). AUTO: Successful and the minimum time served → promote,
    unless an operator's rollback (or pause) holds automation (`gateway.cutover.hold`): then it waits.

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
    if hold is not None:
        return Next(Step.HOLD, hold.describe())
    return Next(Step.PROMOTE, "gate Successful" if config.stage != Stage.OLD_ONLY else "auto policy starts shadowing")


def still_needs(config: CutoverConfig, evaluation: Evaluation | None, now: datetime) -> list[str]:
    """The scorecard's "what the next gate still needs": the gate's needs plus the minimum time left."""
    needs = list(evaluation.needs) if evaluation else ["an evaluation"]
    if config.stage_since is not None:
        left = config.min_stage_seconds - (now - config.stage_since).total_seconds()
        if left > 0:
            needs.append(f"{left:.0f} s more in this stage")
    return needs
