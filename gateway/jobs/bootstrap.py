"""Starting a gateway process: its resources (`GatewayState`) with every leg follow-up registered.

The API's lifespan and `gateway reconcile` both start here, so a leg finished in either process runs the same
follow-ups.
"""

from __future__ import annotations

from common.settings import Settings
from gateway.engines import metrics
from gateway.engines.dispatcher import Dispatcher
from gateway.jobs import follow_ups
from gateway.legs.machine import on_finish
from gateway.runtime import GatewayState


def start_gateway(settings: Settings, dispatcher: Dispatcher | None = None) -> GatewayState:
    follow_ups.install(on_finish)
    metrics.install(on_finish, settings.gateway_metrics_enabled)
    return GatewayState.build(settings, dispatcher)
