"""A rate with a stated confidence: the Wilson score interval on k events in n trials, and the decision it allows.

Why an interval and not "rate over a minimum count": one spurious mismatch in twelve is a rate of 8 %, but the
data are just as consistent with a true rate of 1 % as with 33 %. A gate that compares the point estimate with a
threshold fails a clean engine as fast as a broken one. A gate that asks "is the whole interval below the
threshold?" (pass), "is the whole interval above it?" (fail), and otherwise waits, states how sure it is: at a
95 % level, a stage is promoted on an engine whose true rate is above the threshold, or failed on one whose true
rate is below it, about one time in forty per look (the simulation in `bench/bench_gate_simulation.py` measures
what repeated looks make of that).

Wilson rather than the normal ("Wald") interval: it stays inside [0, 1] and is honest at 0 events and small n,
where the Wald interval collapses to a point; rather than Clopper-Pearson: it needs no beta quantile (only
the standard library), and is less conservative, so a decision takes fewer samples for the same coverage
on average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from statistics import NormalDist
from typing import Any

DEFAULT_CONFIDENCE = 0.95
# More samples than this are never asked for ("cannot decide at this rate" instead): a rate at the threshold
# itself needs an unbounded number.
MAX_MORE_SAMPLES = 1_000_000


class Side(StrEnum):
    """Where a rate's interval lies with respect to its threshold."""

    BELOW = "below"  # the upper bound is below the threshold: the rate passes
    ABOVE = "above"  # the lower bound is above the threshold: the rate fails
    UNDECIDED = "undecided"  # the threshold lies inside the interval: more samples are needed


@lru_cache(maxsize=32)
def z_of(confidence: float) -> float:
    """The two-sided standard normal quantile of a confidence level (0.95 → 1.96)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(events: float, trials: float, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of `events` in `trials` (no trials: the whole of [0, 1])."""
    if trials <= 0:
        return 0.0, 1.0
    z = z_of(confidence)
    p = min(max(events / trials, 0.0), 1.0)
    z2n = z * z / trials
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials)) / (1 + z2n)
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    # At 0 (or all) events the bound is exactly 0 (or 1); rounding must not make it look otherwise.
    if events <= 0:
        low = 0.0
    if events >= trials:
        high = 1.0
    return low, high


def pct(rate: float) -> str:
    """1 decimal, without a trailing ".0" (8 %, 1.5 %, 33 %)."""
    return f"{rate * 100:.1f} %".replace(".0 %", " %")


def _pct_bare(rate: float) -> str:
    return pct(rate)[:-2]


@dataclass(frozen=True)
class RateInterval:
    """k events in n trials and its interval at a confidence level: the one way every surface shows a rate."""

    events: int
    trials: int
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def rate(self) -> float | None:
        return self.events / self.trials if self.trials else None

    @property
    def bounds(self) -> tuple[float, float]:
        return wilson(self.events, self.trials, self.confidence)

    @property
    def low(self) -> float:
        return self.bounds[0]

    @property
    def high(self) -> float:
        return self.bounds[1]

    def describe(self, noun: str = "") -> str:
        """ "mismatch 8 % (95 %: 1.5–35 %)"; "mismatch — (no samples)" when there are none."""
        head = f"{noun} " if noun else ""
        if not self.trials:
            return f"{head}— (no samples)"
        low, high = self.bounds
        return f"{head}{pct(self.events / self.trials)} ({pct(self.confidence)}: {_pct_bare(low)}–{pct(high)})"

    def to_dict(self) -> dict[str, Any]:
        low, high = self.bounds
        return {
            "events": self.events,
            "trials": self.trials,
            "rate": self.rate,
            "low": low,
            "high": high,
            "confidence": self.confidence,
            "text": self.describe(),
        }


@dataclass(frozen=True)
class RateDecision:
    """A rate judged against a threshold: which side its interval lies on, and what deciding would take."""

    interval: RateInterval
    threshold: float
    side: Side
    # Undecided: how many more trials, at the current rate, until the interval leaves the threshold
    # (None: it never does at this rate, e.g. a rate equal to the threshold).
    more_trials: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.interval.to_dict(),
            "threshold": self.threshold,
            "side": self.side.value,
            "more_trials": self.more_trials,
        }


def side_of(events: float, trials: float, threshold: float, confidence: float) -> Side:
    low, high = wilson(events, trials, confidence)
    if high < threshold:
        return Side.BELOW
    if low > threshold:
        return Side.ABOVE
    return Side.UNDECIDED


def more_trials_to_decide(events: int, trials: int, threshold: float, confidence: float) -> int | None:
    """The fewest extra trials, the events growing at the current rate (0 % with no trials yet), that decide.

    The interval narrows as trials grow at a fixed rate, so "decided after m more" is monotonic in m: double
    until it decides, then bisect. None when the current rate sits on the threshold (it never decides)."""
    rate = events / trials if trials else 0.0

    def decided(more: int) -> bool:
        total = trials + more
        return side_of(rate * total, total, threshold, confidence) != Side.UNDECIDED

    if decided(0):
        return 0
    high = 1
    while not decided(high):
        high *= 2
        if high > MAX_MORE_SAMPLES:
            return None
    low = high // 2  # not decided at low (or low == 0, checked above)
    while high - low > 1:
        mid = (low + high) // 2
        if decided(mid):
            high = mid
        else:
            low = mid
    return high


def decide_rate(events: int, trials: int, threshold: float, confidence: float = DEFAULT_CONFIDENCE) -> RateDecision:
    """Pure and total: any counts give a side, and for an undecided one how many more trials would decide."""
    interval = RateInterval(events, trials, confidence)
    side = side_of(events, trials, threshold, confidence)
    more = None if side != Side.UNDECIDED else more_trials_to_decide(events, trials, threshold, confidence)
    return RateDecision(interval, threshold, side, more)
