"""The outbox's terms: how long a relay's claim lasts, how much one claim takes, the channel that wakes a relay,
and what a relay holds of a leg it sends (`OutboxLeg`).

The outbox is the set of legs not yet accepted by their engine (`dispatch_state` PENDING): the request that
inserts a leg and the relay that sends it (`gateway.engines.relay`) agree on these figures, so they live with
the rows rather than with either side.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.store.models import Leg

# The outbox is flushed at most this many legs per claim.
OUTBOX_BATCH = 1000
# A relay's claim on the legs it is sending: no other relay takes them for this long. A relay that dies
# mid-send leaves its legs to be sent again after it; a send that hangs longer may be sent twice.
OUTBOX_LEASE = timedelta(minutes=2)
# PostgreSQL NOTIFY channel: a leg for the relay was committed (migration 0009, `leg_relay_due`), or a shadowed
# job's primary leg was just tried for the first time, so its shadow legs are now due (0008, `leg_shadow_due`).
OUTBOX_CHANNEL = "gateway_outbox"


@dataclass(frozen=True)
class OutboxLeg:
    """What the relay needs of a leg it sends: read from a claim, or handed over by the request that inserted it
    (`gateway.engines.relay.Relay.hand_over`), which saves the claim's round trip."""

    id: str
    engine: str
    spec: dict[str, Any]
    role: str
    routing: dict[str, Any] | None
    deadline: datetime | None
    dispatched_at: datetime | None
    infra_retries: int
    # When it was due before the relay leased it: handed back if it was not tried.
    next_attempt_at: datetime | None

    @classmethod
    def of(cls, leg: Leg | dict[str, Any]) -> OutboxLeg:
        get = leg.get if isinstance(leg, dict) else lambda name: getattr(leg, name)
        return cls(
            id=get("id"),
            engine=get("engine"),
            spec=get("spec"),
            role=get("role"),
            routing=get("routing"),
            deadline=get("deadline"),
            dispatched_at=get("dispatched_at"),
            infra_retries=get("infra_retries") or 0,
            next_attempt_at=get("next_attempt_at"),
        )
