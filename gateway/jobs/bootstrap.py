"""Starting a gateway process: its resources (`GatewayState`) with every leg follow-up registered.

The API's lifespan and `gateway reconcile` both start here, so a leg finished in either process runs the same
follow-ups and the
same compare step.
"""

from __future__ import annotations

import gc

from common.settings import Settings
from gateway.compare import mark_due as comparison
from gateway.compare.step import CompareStep
from gateway.engines import metrics
from gateway.engines.dispatcher import Dispatcher
from gateway.jobs import submission_follow_up
from gateway.jobs.cutover_gates import GateStep
from gateway.legs.machine import FinishHooks
from gateway.runtime import GatewayState
from gateway.store.leg_writer import join_leg


def start_gateway(settings: Settings, dispatcher: Dispatcher | None = None) -> GatewayState:
    # The follow-ups of a finished leg, explicit here and handed to everything that finishes legs.
    hooks = FinishHooks(join=join_leg)
    submission_follow_up.install(hooks)
    metrics.install(hooks, settings.gateway_metrics_enabled)
    comparison.install(hooks)
    state = GatewayState.build(settings, dispatcher, hooks)
    # Comparisons are written by the reconciler after each tick, for every pair whose two legs are final.
    state.reconciler.steps[comparison.NAME] = CompareStep(
        state.sessions, state.is_postgres, settings.gateway_rejudge_per_hour
    )
    # Cutover gates are evaluated after the comparisons, on their own (slower) clock.
    state.reconciler.steps["cutover_gates"] = GateStep(
        state.sessions, state.is_postgres, settings.gateway_cutover_evaluate_seconds, state.health.alive
    )
    return state


def freeze_startup_heap() -> None:
    """Take everything allocated so far (imports, the app, pools, caches) out of the garbage collector's view.

    A gateway process keeps the objects of its start for its whole life; without this every full collection walks
    all of them again. A reconciler cycle over 10,000 open legs allocates enough to trigger one in every other
    cycle: about 80 ms of CPU each on the development machine (`bench/bench_reconciler.py`), as much as the rest
    of the cycle. Frozen objects are never collected, right for what lives as long as the process. Called once per
    process, after `start_gateway`, by the API's lifespan and `gateway reconcile` (not in tests, which start many
    gateways in one process).
    """
    gc.collect()
    gc.freeze()
