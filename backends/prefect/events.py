"""Prefect's own event stream as the Prefect adapter's completion feed (`backends.interface.CompletionFeed`).

Why: without a feed the gateway learns that a flow run ended at its next reconciler tick (up to the reconcile
interval later). Prefect 3 publishes every flow-run state change as an event (`prefect.flow-run.<state name>`,
the run's name and state type among the resource's labels) on a websocket, `GET /api/events/out` (the stream the
SDK's `PrefectEventSubscriber` reads). The gateway names each flow run after its leg (`name=leg_id` at submit),
so a final state's event names the leg to look at now.

The SDK is not imported (the gateway process speaks HTTP to Prefect, see `backends.prefect.adapter`): this
module speaks the stream's small protocol itself, with `websockets`:
1. connect to `<api>/events/out` with the `prefect` subprotocol;
2. `{"type": "auth", "token": <auth string or null>}`, answered by `{"type": "auth_success"}`;
3. `{"type": "filter", "filter": <EventFilter>, "backfill": true}`: flow-run events since a few seconds before
   the connection (the server subscribes before it backfills, so nothing between is lost);
4. then `{"type": "event", "event": {...}}` messages, for as long as the socket is open.

An event is a hint, as the interface says: the adapter's `poll` decides the leg's state; a lost event is found
by the next tick. Events of runs the gateway did not start name no leg and change nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, WebSocketException
from websockets.typing import Subprotocol

from backends.interface import EngineUnavailable
from common.redact import redact_text

# The state types that end a flow run (`backends.prefect.states`: SUCCEEDED, FAILED, CANCELLED, CRASHED).
FINAL_TYPES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
FLOW_RUN_EVENTS = "prefect.flow-run."
# Replayed from before the connection: covers the moment between connecting and the server's subscription.
BACKFILL = timedelta(seconds=10)
OPEN_TIMEOUT = 10.0


def events_url(api_url: str) -> str:
    """`http(s)://host/api` → `ws(s)://host/api/events/out`."""
    base = api_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + "/events/out"


def ended_run_name(message: dict[str, Any]) -> str | None:
    """The flow run's name if this stream message says the run reached a final state, else None."""
    if message.get("type") != "event":
        return None
    event = message.get("event") or {}
    resource = event.get("resource") or {}
    if not str(event.get("event", "")).startswith(FLOW_RUN_EVENTS):
        return None
    if resource.get("prefect.state-type") not in FINAL_TYPES:
        return None
    name = resource.get("prefect.resource.name")
    return str(name) if name else None


def _filter(now: datetime) -> dict[str, Any]:
    return {
        "occurred": {"since": (now - BACKFILL).isoformat(), "until": (now + timedelta(days=365)).isoformat()},
        "event": {"prefix": [FLOW_RUN_EVENTS]},
    }


async def flow_run_completions(api_url: str, auth_string: str | None) -> AsyncIterator[list[str]]:
    """Names of flow runs that reached a final state (the gateway's leg ids), one batch per event; the first batch
    is empty and comes once the filter is sent. A lost stream raises `EngineUnavailable`."""
    url = events_url(api_url)
    try:
        socket = await connect(url, subprotocols=[Subprotocol("prefect")], open_timeout=OPEN_TIMEOUT)
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise EngineUnavailable(redact_text(f"Prefect event stream unreachable: {exc!r}")) from None
    try:
        await socket.send(json.dumps({"type": "auth", "token": auth_string}))
        answer = json.loads(await socket.recv())
        if answer.get("type") != "auth_success":
            raise EngineUnavailable(redact_text(f"Prefect event stream refused the login: {answer.get('reason')}"))
        await socket.send(json.dumps({"type": "filter", "filter": _filter(datetime.now(UTC)), "backfill": True}))
        yield []  # listening now
        while True:
            name = ended_run_name(json.loads(await socket.recv()))
            if name is not None:
                yield [name]
    except WebSocketException as exc:
        raise EngineUnavailable(redact_text(f"Prefect event stream lost: {exc!r}")) from None
    finally:
        await socket.close()
