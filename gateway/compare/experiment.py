"""One experiment, in the spirit of GitHub Scientist: the primary's answer is what the client got; the shadow
(the candidate) ran beside it; `Experiment.run` says whether they agree and, if not, how.

It sees two finished legs as plain values (`LegRun`), so it needs no database and no engine, and it never
raises for a bad report: the caller records a raise as `compare_error`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backends.interface import LegPhase
from common.scoring import score
from gateway.compare.diff import Difference, diff_reports, flips
from gateway.compare.normalise import strip_keys
from gateway.compare.outcomes import ComparisonOutcome, Side
from gateway.compare.rules import Rules
from gateway.legs.states import DispatchState, LegOutcome


@dataclass(frozen=True)
class LegRun:
    """What the comparator needs of a finished leg."""

    engine: str
    phase: str
    outcome: str | None
    report: dict[str, Any] | None
    error: str | None = None
    dispatch_state: str = DispatchState.SENT.value
    last_error: str | None = None
    created_at: datetime | None = None
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def succeeded(self) -> bool:
        return self.phase == LegPhase.SUCCEEDED and isinstance(self.report, dict)

    @property
    def timed_out(self) -> bool:
        return self.outcome == LegOutcome.TIMED_OUT

    @property
    def late(self) -> bool:
        """Passed its deadline queued behind a busy but live worker (a Prefect run Late, its runner polling; a
        Celery message in a queue a live worker consumes, or reserved by one)."""
        return self.outcome == LegOutcome.LATE

    @property
    def never_accepted(self) -> bool:
        return self.dispatch_state != DispatchState.SENT

    @property
    def stalled(self) -> bool:
        """Timed out after its engine said nothing was executing it (a Prefect run Late, its runner gone):
        the engine stopped, which is an infrastructure error, not a slow run."""
        return self.timed_out and not self.never_accepted and bool(self.last_error)

    def queue_seconds(self) -> float | None:
        begin = self.dispatched_at or self.created_at
        return _seconds(begin, self.started_at)

    def run_seconds(self) -> float | None:
        return _seconds(self.started_at or self.dispatched_at, self.finished_at)

    def failure(self) -> str:
        """Why this leg gave no report, in one line."""
        if self.never_accepted:
            return f"{self.engine}: never accepted by the engine ({self.last_error or 'unreachable'})"
        if self.stalled:
            return f"{self.engine}: timed out with nothing executing it ({self.last_error})"
        if self.late:
            return f"{self.engine}: late: still queued behind a busy worker at its deadline"
        return f"{self.engine}: {self.outcome or self.phase}{': ' + self.error if self.error else ''}"


def _seconds(begin: datetime | None, end: datetime | None) -> float | None:
    if begin is None or end is None:
        return None
    return max(0.0, (end - begin).total_seconds())


@dataclass(frozen=True)
class Verdict:
    outcome: ComparisonOutcome
    side: Side | None = None
    reason: str | None = None
    differences: list[dict[str, Any]] = field(default_factory=list)
    difference_count: int = 0
    primary_score: float | None = None
    shadow_score: float | None = None
    # A/A only: every test seen, and those whose verdict flipped between the two identical runs.
    tests_seen: frozenset[str] = frozenset()
    tests_flipped: frozenset[str] = frozenset()


class Experiment:
    """Compare a primary leg with a shadow leg under `rules`; `is_flaky(test)` is the A/A evidence."""

    def __init__(self, rules: Rules, is_flaky: Callable[[str], bool] = lambda _test: False, aa: bool = False) -> None:
        self.rules = rules
        self.is_flaky = is_flaky
        self.aa = aa

    def run(self, primary: LegRun, shadow: LegRun) -> Verdict:
        if shadow.timed_out and not shadow.never_accepted and not shadow.stalled and primary.succeeded:
            return Verdict(ComparisonOutcome.SHADOW_TIMEOUT, reason=shadow.failure(), **self._scores(primary, None))
        if shadow.late and primary.succeeded:
            # Its engine was alive and at its limit: not the engine's error, and no grade to compare.
            return Verdict(ComparisonOutcome.LATE, side=Side.SHADOW, reason=shadow.failure(),
                           **self._scores(primary, None))  # fmt: skip
        # A late shadow is nobody's infrastructure error: only the legs that broke are named.
        legs = ((Side.PRIMARY, primary), (Side.SHADOW, shadow))
        broken = [side for side, leg in legs if not leg.succeeded and not leg.late]
        if broken:
            side = Side.BOTH if len(broken) == 2 else broken[0]
            reasons = [leg.failure() for _side, leg in legs if not leg.succeeded]
            scores = self._scores(primary if primary.succeeded else None, shadow if shadow.succeeded else None)
            return Verdict(ComparisonOutcome.INFRA_ERROR, side=side, reason="; ".join(reasons), **scores)
        assert primary.report is not None and shadow.report is not None
        left, right = strip_keys(primary.report, self.rules), strip_keys(shadow.report, self.rules)
        found = diff_reports(left, right, self.rules)
        scores = self._scores(primary, shadow)
        seen, flipped = flips(left, right) if self.aa else (set(), set())
        if not found:
            return Verdict(ComparisonOutcome.MATCH, tests_seen=frozenset(seen), **scores)
        outcome = ComparisonOutcome.MISMATCH
        tests = {d.test for d in found if d.test is not None}
        if not self.aa and tests and all(self.is_flaky(test) for test in tests):
            outcome = ComparisonOutcome.NOISE
        return Verdict(
            outcome,
            reason=_summary_of(found),
            differences=[d.as_json(self.rules) for d in found[: self.rules.max_differences]],
            difference_count=len(found),
            tests_seen=frozenset(seen),
            tests_flipped=frozenset(flipped),
            **scores,
        )

    @staticmethod
    def _scores(primary: LegRun | None, shadow: LegRun | None) -> dict[str, float | None]:
        return {
            "primary_score": score(primary.report) if primary and primary.report else None,
            "shadow_score": score(shadow.report) if shadow and shadow.report else None,
        }


def _summary_of(found: list[Difference]) -> str:
    tests = sorted({d.test for d in found if d.test})
    if tests:
        more = f" and {len(tests) - 3} more" if len(tests) > 3 else ""
        return f"{len(tests)} test(s) differ: {', '.join(tests[:3])}{more}"
    return f"{len(found)} field(s) differ: {', '.join(d.path for d in found[:3])}"
