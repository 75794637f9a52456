"""Re-judging a mismatch: run the job again on both engines and ask whether each engine agrees with itself.

A mismatch is evidence only if it reproduces. The first mismatch between two engines may be a flaky test (a
test that depends on randomness, timing or order) that no A/A run has caught yet; deciding `noise` from the flake
statistics of the moment misses it. So a mismatch (capped per scope and hour, `GATEWAY_REJUDGE_PER_HOUR`) is run
again, fenced like any shadow leg, once on each engine, and judged on four reports:

- each engine's two runs are compared with each other (an A/A pair per engine): the tests whose verdict flipped
  are flaky, and the flake statistics of the course content learn them;
- if every test on which the engines differed flipped on one engine or the other, the mismatch is `noise`;
- if some differing test did not flip - both engines agree with themselves there and still differ - it is a
  reproducible `mismatch` (`reproduced`);
- if a re-run gave no report (an infrastructure error), nothing is learned and the comparison keeps its class
  (`incomplete`).
The comparison's outcome is then its current class; gates and the scorecard count that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.compare.diff import flips
from gateway.compare.experiment import LegRun
from gateway.compare.normalise import strip_keys
from gateway.compare.outcomes import ComparisonOutcome
from gateway.compare.rules import Rules


class RejudgeState(StrEnum):
    RUNNING = "running"  # the two re-runs are on their way
    DONE = "done"


class RejudgeVerdict(StrEnum):
    REPRODUCED = "reproduced"  # both engines agree with themselves and still differ: a real mismatch
    NOISE = "noise"  # every differing test flipped between identical runs of one engine
    INCOMPLETE = "incomplete"  # a re-run gave no report: the class stays as it was


@dataclass(frozen=True)
class Rejudgement:
    verdict: RejudgeVerdict
    outcome: ComparisonOutcome
    reason: str
    flipped_primary: frozenset[str] = frozenset()
    flipped_shadow: frozenset[str] = frozenset()
    # Per engine, (tests seen, tests flipped) between its two runs: the flake statistics' evidence.
    flake_evidence: tuple[tuple[frozenset[str], frozenset[str]], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "flipped": {"primary": sorted(self.flipped_primary), "shadow": sorted(self.flipped_shadow)},
        }


def differing_tests(differences: list[dict[str, Any]] | None) -> set[str]:
    return {d["test"] for d in differences or [] if d.get("test")}


def rejudge(
    rules: Rules,
    differences: list[dict[str, Any]] | None,
    primary: LegRun,
    shadow: LegRun,
    primary_again: LegRun,
    shadow_again: LegRun,
) -> Rejudgement:
    """Pure: the original pair's differences and four finished legs give the mismatch's class now."""
    broken = [leg.failure() for leg in (primary_again, shadow_again) if not leg.succeeded]
    if broken or not primary.succeeded or not shadow.succeeded:
        why = "; ".join(broken) or "an original leg has no report"
        return Rejudgement(RejudgeVerdict.INCOMPLETE, ComparisonOutcome.MISMATCH, f"re-run incomplete: {why}")
    assert primary.report and shadow.report and primary_again.report and shadow_again.report
    evidence = []
    flipped: list[frozenset[str]] = []
    for first, again in ((primary.report, primary_again.report), (shadow.report, shadow_again.report)):
        left, right = strip_keys(first, rules), strip_keys(again, rules)
        seen, flips_here = flips(left, right)
        # Only a verdict that flips is flaky: a message that differs between two runs (a timing in it, which test
        # the time limit caught) is not, or every timed-out student would be noise.
        changed = frozenset(flips_here)
        evidence.append((frozenset(seen), changed))
        flipped.append(changed)
    tests = differing_tests(differences)
    flaky = flipped[0] | flipped[1]
    if tests and tests <= flaky:
        names = ", ".join(sorted(tests)[:3])
        return Rejudgement(RejudgeVerdict.NOISE, ComparisonOutcome.NOISE, f"re-run: flaky on {names}",
                           flipped[0], flipped[1], tuple(evidence))  # fmt: skip
    if not tests and (flipped[0] or flipped[1]):
        return Rejudgement(RejudgeVerdict.NOISE, ComparisonOutcome.NOISE, "re-run: an engine disagreed with itself",
                           flipped[0], flipped[1], tuple(evidence))  # fmt: skip
    steady = sorted(tests - flaky)[:3]
    what = f" on {', '.join(steady)}" if steady else ""
    return Rejudgement(RejudgeVerdict.REPRODUCED, ComparisonOutcome.MISMATCH, f"re-run: reproduced{what}",
                       flipped[0], flipped[1], tuple(evidence))  # fmt: skip
