"""A Prefect run `Late` means two things: behind a busy runner that still polls (busy, waited for) or with no
runner at all (stalled, an infrastructure error). The adapter tells them apart by the deployment's last poll."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from backends.interface import LegPhase
from backends.prefect.adapter import PrefectAdapter
from common.settings import Settings

pytestmark = pytest.mark.fast


def late_run() -> dict[str, Any]:
    return {"id": "run-1", "idempotency_key": "leg-1", "deployment_id": "dep-1",
            "expected_start_time": "2026-12-07T10:00:00+00:00",
            "state": {"type": "SCHEDULED", "name": "Late", "timestamp": "2026-12-07T10:00:20+00:00"}}  # fmt: skip


@pytest.mark.parametrize(
    ("gone", "busy", "stalled"),
    [
        ({"dep-1": None}, True, False),  # the runner polled lately: it is at its limit, the run waits its turn
        ({"dep-1": "no runner has polled deployment t/system since 10:00"}, False, True),  # nothing serves it
    ],
)
def test_a_late_run_is_busy_while_its_runner_polls_and_stalled_once_it_does_not(
    gone: dict[str, str | None], busy: bool, stalled: bool
) -> None:
    settings = Settings(prefect_api_url="http://prefect.invalid/api")
    adapter = PrefectAdapter(settings, transport=httpx.MockTransport(lambda _request: httpx.Response(500)))
    try:
        state = adapter._state("leg-1", late_run(), gone)
    finally:
        adapter.close()
    assert (state.phase, state.native) == (LegPhase.QUEUED, "Late")
    assert (bool(state.busy), bool(state.stalled)) == (busy, stalled), state
