"""The comparison's follow-up on the leg state machine's finish hook.

A follow-up runs inside the finishing leg's transaction and cannot query (the hook is synchronous), so it only
marks the leg `compare_due` when the leg takes part in a comparison: a shadow leg, or a primary leg whose routing
names shadow legs. The reconciler's compare step (`gateway.compare.step`) then compares every pair of which
both legs are final; a pair whose other leg is still running is compared when that leg finishes and is marked.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.legs.machine import FinishedLeg, FinishHooks
from gateway.legs.states import LegRole, is_shadowed_primary
from gateway.store.models import Base, Leg

NAME = "comparison"


def takes_part(leg: Leg) -> bool:
    if leg.result_id is None:
        return False
    return leg.role == LegRole.SHADOW or is_shadowed_primary(leg.role, leg.routing)


def mark_for_comparison(finished: FinishedLeg) -> Iterable[Base]:
    if takes_part(finished.leg):
        finished.leg.compare_due = True
    return []


def install(hooks: FinishHooks) -> None:
    hooks.connect(NAME, mark_for_comparison)
