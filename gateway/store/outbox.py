"""The outbox's terms: how long a relay's claim lasts, how much one claim takes, the channel that wakes a relay.

The outbox is the set of legs not yet accepted by their engine (`dispatch_state` PENDING): the request that
inserts a leg and the relay that sends it (`gateway.engines.relay`) agree on these figures, so they live with
the rows rather than with either side.
"""

from __future__ import annotations

from datetime import timedelta

# The outbox is flushed at most this many legs per claim.
OUTBOX_BATCH = 1000
# A relay's claim on the legs it is sending: no other relay takes them for this long. A relay that dies
# mid-send leaves its legs to be sent again after it; a send that hangs longer may be sent twice.
OUTBOX_LEASE = timedelta(minutes=2)
# PostgreSQL NOTIFY channel: a leg for the relay was committed (migration 0009, `leg_relay_due`), or a shadowed
# job's primary leg was just tried for the first time, so its shadow legs are now due (0008, `leg_shadow_due`).
OUTBOX_CHANNEL = "gateway_outbox"
