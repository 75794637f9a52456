"""Rates with a stated confidence (gateway.cutover.confidence) and the gate decisions they make: table-driven."""

from __future__ import annotations

import pytest

from gateway.cutover.confidence import RateInterval, Side, decide_rate, more_trials_to_decide, side_of, wilson, z_of
from gateway.cutover.gates import Criterion, Evidence, Verdict, evaluate
from gateway.cutover.stages import GateThresholds

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    "events,trials,confidence,low,high",
    [
        (0, 0, 0.95, 0.0, 1.0),  # nothing known
        (0, 10, 0.95, 0.0, 0.2775),
        (1, 12, 0.95, 0.0149, 0.3539),
        (0, 100, 0.95, 0.0, 0.0370),
        (31, 1000, 0.95, 0.0219, 0.0437),
        (10, 10, 0.95, 0.7225, 1.0),
        (1, 12, 0.80, 0.0253, 0.2417),  # a lower level: a narrower interval
        (1, 12, 0.99, 0.0099, 0.4535),
    ],
)
def test_wilson_interval(events: int, trials: int, confidence: float, low: float, high: float) -> None:
    got = wilson(events, trials, confidence)
    assert got == pytest.approx((low, high), abs=5e-4)


def test_z_of_the_usual_levels() -> None:
    assert (round(z_of(0.95), 3), round(z_of(0.99), 3), round(z_of(0.80), 3)) == (1.96, 2.576, 1.282)
    with pytest.raises(ValueError):
        z_of(1.0)


@pytest.mark.parametrize(
    "events,trials,threshold,side",
    [
        (1, 12, 0.05, Side.UNDECIDED),  # the issue's finding: one spurious mismatch in 12 decides nothing
        (0, 12, 0.05, Side.UNDECIDED),  # nor do 12 clean ones
        (0, 100, 0.05, Side.BELOW),
        (3, 12, 0.05, Side.ABOVE),  # 25 %, lower bound 8.9 %
        (0, 0, 0.05, Side.UNDECIDED),
        (5, 100, 0.05, Side.UNDECIDED),  # on the threshold: undecidable at this rate
    ],
)
def test_side_of_a_rate(events: int, trials: int, threshold: float, side: Side) -> None:
    assert side_of(events, trials, threshold, 0.95) == side


@pytest.mark.parametrize(
    "events,trials,threshold",
    [(0, 0, 0.01), (0, 12, 0.05), (1, 12, 0.05), (1, 60, 0.01), (1, 100, 0.05), (4, 100, 0.02)],
)
def test_more_trials_is_the_fewest_that_decide_at_the_current_rate(events: int, trials: int, threshold: float) -> None:
    more = more_trials_to_decide(events, trials, threshold, 0.95)
    assert more is not None and more > 0
    rate = events / trials if trials else 0.0

    def side_after(extra: int) -> Side:
        return side_of(rate * (trials + extra), trials + extra, threshold, 0.95)

    assert side_after(more) != Side.UNDECIDED and side_after(more - 1) == Side.UNDECIDED


def test_a_rate_on_its_threshold_never_decides() -> None:
    assert decide_rate(5, 100, 0.05).more_trials is None


@pytest.mark.parametrize(
    "events,trials,text",
    [
        (1, 12, "mismatch 8.3 % (95 %: 1.5–35.4 %)"),
        (0, 100, "mismatch 0 % (95 %: 0–3.7 %)"),
        (0, 0, "mismatch — (no samples)"),
    ],
)
def test_every_surface_shows_the_interval_the_same_way(events: int, trials: int, text: str) -> None:
    assert RateInterval(events, trials).describe("mismatch") == text
    assert RateInterval(events, trials).to_dict()["text"] == text.removeprefix("mismatch ")


ISSUE = GateThresholds(min_samples=10, max_mismatch_rate=0.05, max_infra_error_rate=0.05, max_p99_ratio=2.0)
TIMES = {"old_p99_seconds": 1.0, "new_p99_seconds": 1.0}


@pytest.mark.parametrize(
    "evidence,thresholds,verdict,decided_by",
    [
        # the clean engine of the issue: 1 spurious mismatch in 12 was a Failed gate; now it waits
        (Evidence(comparable=12, mismatches=1, new_legs=12, **TIMES), ISSUE, Verdict.INCONCLUSIVE,
         Criterion.MISMATCH_RATE),
        # a broken engine: 6 in 12 is conclusively above 5 %
        (Evidence(comparable=12, mismatches=6, new_legs=12, **TIMES), ISSUE, Verdict.FAILED, Criterion.MISMATCH_RATE),
        # clean long enough: the whole interval below 5 % for both rates
        (Evidence(comparable=80, new_legs=80, **TIMES), ISSUE, Verdict.SUCCESSFUL, Criterion.ALL),
        (Evidence(comparable=60, new_legs=60, **TIMES), ISSUE, Verdict.INCONCLUSIVE, Criterion.MISMATCH_RATE),
        # the same 60 at a lower confidence level is enough
        (Evidence(comparable=60, new_legs=60, **TIMES), GateThresholds(**{**ISSUE.to_dict(), "confidence": 0.8}),
         Verdict.SUCCESSFUL, Criterion.ALL),
        # infra errors: judged by their own interval, on the new engine's legs
        (Evidence(comparable=80, new_legs=100, new_infra_errors=20, **TIMES), ISSUE, Verdict.FAILED,
         Criterion.INFRA_ERROR_RATE),
        (Evidence(comparable=80, new_legs=90, new_infra_errors=1, **TIMES), ISSUE, Verdict.INCONCLUSIVE,
         Criterion.INFRA_ERROR_RATE),
    ],
)  # fmt: skip
def test_gate_decides_on_intervals(
    evidence: Evidence, thresholds: GateThresholds, verdict: Verdict, decided_by: Criterion
) -> None:
    result = evaluate(evidence, thresholds)
    assert (result.verdict, result.decided_by) == (verdict, decided_by), result.needs
    shown = result.to_dict()
    assert shown["confidence"] == thresholds.confidence
    assert shown["mismatch"]["trials"] == evidence.comparable and shown["infra_error"]["trials"] == evidence.new_legs


def test_inconclusive_says_how_many_more_samples_decide() -> None:
    result = evaluate(Evidence(comparable=12, mismatches=1, new_legs=12, **TIMES), ISSUE)
    assert result.needs[0] == (
        "mismatch 8.3 % (95 %: 1.5–35.4 %) includes 5 %: about 153 more comparisons at this rate would decide"
    )
    assert result.mismatch is not None and result.mismatch.more_trials == 153
