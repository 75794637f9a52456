"""The `verified` answer policy: which engine's verdict a canary job's row gets once both engines have spoken.

During a migration the control is the old engine (Scientist returns the control's answer). Under `verified` a
job the new engine answers and the old one shadows has its row written only when the pair is compared
(`gateway.compare.step`): if the engines agree, the new engine's answer, verified; if they disagree, the old
engine's answer - a student never gets the candidate's grade where the control says otherwise - and the
disagreement is a comparison the gate sees; if the old engine gave no verdict (its deadline passed, or it
failed), the new engine's answer, marked unverified; if the new engine failed and the old one answered, the old
engine's answer. Pure: the comparison's outcome and side in, the answer out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.compare.outcomes import ComparisonOutcome, Side


@dataclass(frozen=True)
class VerifiedAnswer:
    source: Side  # PRIMARY (the new engine) or SHADOW (the old engine, the control)
    verified: bool  # the old engine's verdict was there to check it against
    why: str

    def to_dict(self, engine: str) -> dict[str, Any]:
        return {"policy": "verified", "written_from": self.source.value, "engine": engine,
                "verified": self.verified, "why": self.why}  # fmt: skip


def verified_answer(outcome: ComparisonOutcome, side: Side | None) -> VerifiedAnswer:
    if outcome in (ComparisonOutcome.MATCH, ComparisonOutcome.NOISE):
        return VerifiedAnswer(Side.PRIMARY, True, "both engines agree")
    if outcome == ComparisonOutcome.MISMATCH:
        return VerifiedAnswer(Side.SHADOW, True, "the engines disagree: the old engine's verdict is written")
    if outcome == ComparisonOutcome.INFRA_ERROR and side == Side.PRIMARY:
        return VerifiedAnswer(Side.SHADOW, True, "the new engine gave no verdict: the old engine's is written")
    if outcome == ComparisonOutcome.SHADOW_TIMEOUT:
        return VerifiedAnswer(Side.PRIMARY, False, "the old engine missed its deadline: unverified")
    if outcome == ComparisonOutcome.LATE:
        return VerifiedAnswer(Side.PRIMARY, False, "the old engine's run was still queued at its deadline: unverified")
    return VerifiedAnswer(Side.PRIMARY, False, f"no verdict to check against ({outcome.value}): unverified")
