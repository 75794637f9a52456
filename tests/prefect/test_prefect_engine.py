"""The Prefect engine end to end: a real server, a real runner (`gateway prefect serve`), the httpx adapter."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.interface import DeploymentNotFound, JobSpec, LegPhase, LegState, TaskKind
from backends.prefect.adapter import PrefectAdapter
from tests.support.prefect_server import wait_until

pytestmark = pytest.mark.slow


def leg() -> str:
    return f"leg-{uuid.uuid4()}"


def job(deployment: str | None = None, **params: Any) -> JobSpec:
    properties = {"deployment": deployment} if deployment else {}
    params = params or {"test_job": {"user_id": "u1"}}
    return JobSpec(kind=TaskKind.STUDENT_TESTING, params=params, properties=properties)


def final_state(adapter: PrefectAdapter, leg_id: str, timeout: float = 90.0) -> LegState:
    def check() -> LegState | None:
        state = adapter.poll([leg_id])[leg_id]
        return state if state.phase.is_final else None

    return wait_until(check, f"{leg_id} to finish", timeout)


def test_noop_run_completes_and_its_json_result_is_read_back(adapter: PrefectAdapter, prefect_runner: Any) -> None:
    leg_id = leg()
    run_id = adapter.submit(job("gateway-noop/system"), leg_id)
    state = final_state(adapter, leg_id)
    assert (state.phase, state.native, state.engine_run_id) == (LegPhase.SUCCEEDED, "Completed", run_id)
    assert state.stalled is None
    assert state.queue == "gateway-noop/system"
    result = adapter.result(leg_id)
    assert (result.phase, result.report, result.error) == (LegPhase.SUCCEEDED, {"noop": True}, None)


def test_the_same_submit_twice_gives_one_run(adapter: PrefectAdapter, prefect_api: str, prefect_runner: Any) -> None:
    leg_id = leg()
    first = adapter.submit(job("gateway-noop/system"), leg_id)
    second = adapter.submit(job("gateway-noop/system"), leg_id)
    assert first == second
    body = {"flow_runs": {"idempotency_key": {"any_": [leg_id]}}}
    runs = httpx.post(f"{prefect_api}/flow_runs/filter", json=body).json()
    assert [r["id"] for r in runs] == [first]
    assert set(runs[0]["tags"]) == {leg_id, "user:u1"}


def test_one_poll_answers_for_many_legs_including_unknown_ones(adapter: PrefectAdapter, prefect_runner: Any) -> None:
    legs = [leg() for _ in range(3)]
    for leg_id in legs:
        adapter.submit(job("gateway-noop/system"), leg_id)
    unknown = leg()
    states = adapter.poll([*legs, unknown])
    assert states[unknown].phase is LegPhase.MISSING
    assert all(states[leg_id].engine_run_id for leg_id in legs)
    for leg_id in legs:
        assert final_state(adapter, leg_id).phase is LegPhase.SUCCEEDED


def test_the_example_assignment_reports_progress_and_its_report(
    adapter: PrefectAdapter, prefect_runner: Any, tmp_path: Path
) -> None:
    from backends import examples

    repos = examples.materialize_example(tmp_path / "example")
    test_job = repos.test_job("passing")
    leg_id = leg()
    adapter.submit(JobSpec(kind=TaskKind.STUDENT_TESTING, params={"test_job": test_job.model_dump()}), leg_id)
    state = final_state(adapter, leg_id, timeout=120)
    assert state.phase is LegPhase.SUCCEEDED, state.error
    # Progress was published from inside the flow as labels and comes back with the state in the same read.
    assert state.progress is not None
    assert (state.progress.percentage, state.progress.metadata["stage"]) == (100, "done")
    result = adapter.result(leg_id)
    assert result.report is not None
    summary = result.report["summary"]
    assert summary["total"] > 0
    assert summary["passed"] == summary["total"]


def test_a_flow_that_raises_is_failed_with_its_error(adapter: PrefectAdapter, prefect_runner: Any) -> None:
    leg_id = leg()
    adapter.submit(job("gateway-test-fail/system"), leg_id)
    state = final_state(adapter, leg_id)
    assert state.phase is LegPhase.FAILED
    assert "Git clone of student repository failed." in (state.error or "")
    result = adapter.result(leg_id)
    assert (result.phase, result.error_type) == (LegPhase.FAILED, "InfrastructureError")
    assert "Git clone of student repository failed." in (result.error or "")


def test_cancel_while_running_stops_the_run(adapter: PrefectAdapter, prefect_runner: Any) -> None:
    leg_id = leg()
    adapter.submit(job("gateway-test-wait/system", seconds=300), leg_id)

    def running_with_progress() -> LegState | None:
        state = adapter.poll([leg_id])[leg_id]
        return state if state.phase is LegPhase.RUNNING and state.progress is not None else None

    state = wait_until(running_with_progress, "the wait flow to run and publish progress")
    assert state.progress is not None and state.progress.percentage == 10
    assert state.started_at is not None
    cancelling = adapter.cancel(leg_id)
    assert cancelling.phase in (LegPhase.CANCELLING, LegPhase.CANCELLED)
    assert final_state(adapter, leg_id).phase is LegPhase.CANCELLED


def _unserved_deployment(api: str, flow_name: str) -> str:
    """A deployment created over the API that no runner serves: like one the gateway did not write."""
    flow = httpx.post(f"{api}/flows/", json={"name": flow_name}).json()
    response = httpx.post(f"{api}/deployments/", json={"name": "system", "flow_id": flow["id"]})
    response.raise_for_status()
    return f"{flow_name}/system"


def test_cancel_while_scheduled_is_immediate_and_a_waiting_run_shows_no_runner(
    adapter: PrefectAdapter, prefect_api: str
) -> None:
    name = _unserved_deployment(prefect_api, f"foreign-{uuid.uuid4().hex[:8]}")
    leg_id = leg()
    adapter.submit(job(name), leg_id)
    state = adapter.poll([leg_id])[leg_id]
    assert (state.phase, state.native) == (LegPhase.QUEUED, "Scheduled")
    assert state.stalled is not None and "no runner has ever polled" in state.stalled
    assert adapter.queue_depths().get(name) == 1
    cancelled = adapter.cancel(leg_id)
    assert cancelled.phase is LegPhase.CANCELLED
    assert name not in adapter.queue_depths()


def test_a_missing_deployment_is_its_own_error(adapter: PrefectAdapter, prefect_api: str) -> None:
    with pytest.raises(DeploymentNotFound) as caught:
        adapter.submit(job("no-such-flow/system"), leg())
    assert caught.value.deployment == "no-such-flow/system"
    with pytest.raises(DeploymentNotFound):
        adapter.submit(job("not-a-deployment-name"), leg())


def test_a_result_the_flow_did_not_persist_is_reported_clearly(adapter: PrefectAdapter, prefect_runner: Any) -> None:
    leg_id = leg()
    adapter.submit(job("gateway-test-unpersisted/system"), leg_id)
    assert final_state(adapter, leg_id).phase is LegPhase.SUCCEEDED
    result = adapter.result(leg_id)
    assert result.report is None
    assert result.error is not None and "did not persist a result" in result.error


def test_health_and_workers_show_the_runner(adapter: PrefectAdapter, prefect_runner: Any) -> None:
    health = adapter.health()
    assert (health.healthy, health.checks) == (True, {"api": True, "runner": True})
    assert health.workers >= 1
    served = {w.name: w for w in adapter.workers()}
    assert served["test-assignment/system"].details["alive"] is True
    assert served["test-assignment/system"].last_seen is not None


def test_submission_processing_runs_the_submit_result_flow(
    adapter: PrefectAdapter, prefect_runner: Any, tmp_path: Path
) -> None:
    """The flow runs exactly the engine-agnostic work: same outcome as calling it in-process on the same input."""
    from backends import examples
    from backends.work.errors import InfrastructureError
    from backends.work.submission_processing import run_submission_processing
    from common.settings import Settings

    repos = examples.materialize_example(tmp_path / "example")
    submission = {"test_job": repos.test_job("passing", user_id="member-7").model_dump(), "result_id": "r-1"}
    try:
        expected: dict[str, Any] | str = run_submission_processing(
            submission, settings=Settings(gateway_data_dir=tmp_path / "in-process")
        )
    except InfrastructureError as exc:
        expected = exc.message
    leg_id = leg()
    adapter.submit(JobSpec(kind=TaskKind.SUBMISSION_PROCESSING, params={"submission": submission}), leg_id)
    state = final_state(adapter, leg_id, timeout=120)
    assert state.queue == "submit-result/system"
    result = adapter.result(leg_id)
    if isinstance(expected, str):
        assert (result.phase, result.error_type) == (LegPhase.FAILED, "InfrastructureError")
        assert expected in (result.error or "")
    else:
        assert result.phase is LegPhase.SUCCEEDED, result.error
        assert result.report is not None
        keys = ("ref", "commit", "changed", "result_id")
        assert {k: result.report[k] for k in keys} == {k: expected[k] for k in keys}


def test_a_forged_completed_state_with_inline_data_is_not_a_report(
    adapter: PrefectAdapter, prefect_api: str, prefect_runner: Any
) -> None:
    """What student code did when it could reach the API: force COMPLETED carrying a made-up report."""
    leg_id = leg()
    run_id = adapter.submit(job("gateway-noop/system"), leg_id)
    forged = {"summary": {"total": 2, "passed": 2, "failed": 0, "skipped": 0}, "result": "PASSED"}
    body = {"state": {"type": "COMPLETED", "name": "Completed", "data": forged}, "force": True}
    httpx.post(f"{prefect_api}/flow_runs/{run_id}/set_state", json=body).raise_for_status()
    state = final_state(adapter, leg_id)
    assert state.phase is LegPhase.SUCCEEDED
    result = adapter.result(leg_id)
    assert result.report is None and result.error_type == "ResultUnavailable"
