"""A Prefect runner that cannot share the API's data folder: a passing student's run is never graded 0.0.

The runner persists its flow results under its own `GATEWAY_DATA_DIR` (a misconfigured volume: not the API's),
so the gateway cannot read the report of a run that succeeded (`ResultUnavailable`). That is an infrastructure
failure: the same flow run is scheduled again within `GATEWAY_INFRA_RETRIES` (here 1), and when the budget is
spent the row is FAILED with the vocabulary's message, never COMPLETED with a score. Real processes: a Prefect
server, a `gateway prefect serve` runner, the API. The in-memory variants of every such path are in
tests/fast/test_unreadable_report.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.failures import InfraMessage
from common.legacy import ResultStatus
from tests.faults.stack import ALICE, PREFECT_DIRECTORY, FaultStack, wait_until
from tests.faults.test_prefect_faults import PrefectSide, prefect_fault_stack

pytestmark = [pytest.mark.slow]


@pytest.fixture
def misconfigured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultStack, PrefectSide]]:
    tmp = tmp_path_factory.mktemp("prefect-unreadable")
    # The runner's data dir is not the API's (tmp/data).
    with prefect_fault_stack(tmp, tmp / "runner-data", {"GATEWAY_INFRA_RETRIES": "1"}, 2) as found:
        yield found


def test_a_report_the_api_cannot_read_is_rerun_then_failed_never_scored(
    misconfigured: tuple[FaultStack, PrefectSide],
) -> None:
    stack, side = misconfigured
    with stack.client(ALICE) as client:
        answer = client.post(
            "/api/tests", json={"directory": PREFECT_DIRECTORY, "version_identifier": stack.next_commits(1)[0]}
        )
        assert answer.status_code == 200, answer.text
        row_id = answer.json()["id"]
    with stack.client() as admin:

        def final() -> dict[str, object] | None:
            row = admin.get(f"/api/results/{row_id}").json()
            return row if row["status"] in (int(ResultStatus.COMPLETED), int(ResultStatus.FAILED)) else None

        row = wait_until(final, "the row to be final", timeout=300, interval=1.0)
    assert row["status"] == int(ResultStatus.FAILED), row  # never COMPLETED with 0.0
    assert row["result_json"]["message"] == InfraMessage.RESULT_UNREADABLE.value, row
    assert "failed in the infrastructure" in stack.server.log_text()  # it was run again first
