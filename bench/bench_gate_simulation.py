"""How often the gate fails a clean engine and promotes a broken one, and how many samples a decision takes.

    .venv/bin/python bench/bench_gate_simulation.py [--stages 1000] [--seed 27] [--every 20] [--cap 5000]

Simulates many stages of one migration: each comparison is a mismatch with a given true probability (the
engine's real, re-judged mismatch rate) and each new-engine leg an infra error with a small one; the gate
(`gateway.cutover.gates.evaluate`, the code the service runs) looks every `--every` comparisons, as the periodic
evaluation does, and the stage ends at the first Successful (promoted) or Failed verdict, or undecided at
`--cap` comparisons. Printed per true rate: how often it was promoted, failed, left undecided, and the median and
90th percentile of comparisons the decision took; beside it the old rule (the point rate once `min_samples`
comparisons are in) over the same streams. Seeded: the same arguments print the same table.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass

from gateway.cutover.gates import Evidence, Verdict, evaluate
from gateway.cutover.stages import GateThresholds

TRUE_RATES = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.10, 0.25)
INFRA_RATE = 0.002  # every engine loses a leg now and then: a clean one is not a perfect one


@dataclass
class Tally:
    promoted: int = 0
    failed: int = 0
    undecided: int = 0
    samples: list[int] | None = None

    def add(self, verdict: Verdict | None, n: int) -> None:
        if self.samples is None:
            self.samples = []
        if verdict == Verdict.SUCCESSFUL:
            self.promoted += 1
        elif verdict == Verdict.FAILED:
            self.failed += 1
        else:
            self.undecided += 1
            return
        self.samples.append(n)

    def row(self, stages: int) -> str:
        samples = sorted(self.samples or [])
        med = f"{statistics.median(samples):.0f}" if samples else "-"
        p90 = f"{samples[int(0.9 * (len(samples) - 1))]}" if samples else "-"
        pct = lambda x: f"{100 * x / stages:.1f} %"  # noqa: E731
        return f"{pct(self.promoted)} | {pct(self.failed)} | {pct(self.undecided)} | {med} | {p90}"


def old_rule(n: int, k: int, infra: int, th: GateThresholds) -> Verdict | None:
    """The gate before intervals: once `min_samples` are in, the point rate against the threshold."""
    if n < th.min_samples:
        return None
    if k / n > th.max_mismatch_rate or infra / n > th.max_infra_error_rate:
        return Verdict.FAILED
    return Verdict.SUCCESSFUL


def stage(
    rng: random.Random, rate: float, th: GateThresholds, every: int, cap: int
) -> tuple[Verdict | None, int, Verdict | None, int]:
    """One simulated stage: (the interval gate's verdict, its samples, the old rule's verdict, its samples)."""
    k = infra = 0
    new_verdict: Verdict | None = None
    old_verdict: Verdict | None = None
    new_n = old_n = cap
    for n in range(1, cap + 1):
        k += rng.random() < rate
        infra += rng.random() < INFRA_RATE
        if n % every:
            continue
        if old_verdict is None and (found := old_rule(n, k, infra, th)) is not None:
            old_verdict, old_n = found, n
        if new_verdict is None:
            evidence = Evidence(
                comparable=n, mismatches=k, new_legs=n, new_infra_errors=infra,
                old_p99_seconds=1.0, new_p99_seconds=1.0,
            )  # fmt: skip
            verdict = evaluate(evidence, th).verdict
            if verdict != Verdict.INCONCLUSIVE:
                new_verdict, new_n = verdict, n
        if new_verdict is not None and old_verdict is not None:
            break
    return new_verdict, new_n, old_verdict, old_n


def simulate(th: GateThresholds, stages: int, seed: int, every: int, cap: int) -> None:
    print(
        f"\nthreshold {th.max_mismatch_rate:.1%} mismatch, {th.max_infra_error_rate:.1%} infra error; "
        f"min_samples {th.min_samples}; confidence {th.confidence:.0%}; a look every {every} comparisons; "
        f"cap {cap}; {stages} stages per rate; infra-error rate {INFRA_RATE:.1%}; seed {seed}\n"
    )
    print("| true mismatch rate | interval gate: promoted | failed | undecided | median n | p90 n "
          "| old rule: promoted | failed | median n |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for rate in TRUE_RATES:
        rng = random.Random(f"{seed}:{rate}:{th.max_mismatch_rate}")
        new, old = Tally(), Tally()
        for _ in range(stages):
            nv, nn, ov, on = stage(rng, rate, th, every, cap)
            new.add(nv, nn)
            old.add(ov, on)
        old_cells = old.row(stages).split(" | ")
        print(f"| {rate:.2%} | {new.row(stages)} | {old_cells[0]} | {old_cells[1]} | {old_cells[3]} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--every", type=int, default=20, help="comparisons between two evaluations")
    parser.add_argument("--cap", type=int, default=5000, help="comparisons after which a stage counts undecided")
    args = parser.parse_args()
    # The defaults, and the setting of the finding (5 %, min_samples 10).
    for th in (GateThresholds(), GateThresholds(min_samples=10, max_mismatch_rate=0.05, max_infra_error_rate=0.05)):
        simulate(th, args.stages, args.seed, args.every, args.cap)


if __name__ == "__main__":
    main()
