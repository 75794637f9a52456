"""Flows for tests and benchmarks only (`gateway prefect serve --test-flows`): a no-op, a waiter, a failure.

They behave like the shipped flows (JSON results in the same storage, progress labels) so a test can cancel a
running flow, kill its runner mid-run, or see an infrastructure failure without a slow or broken git checkout.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from backends.prefect import names
from backends.prefect.flows import result_storage
from backends.prefect.labels import progress_labels
from backends.prefect.progress import update_own_labels
from backends.work.errors import InfrastructureError


@flow(name=names.NOOP_FLOW, persist_result=True, result_serializer="json", result_storage=result_storage())
def noop(test_job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Returns at once: measures the engine's own overhead."""
    return {"noop": True}


@flow(name=names.WAIT_FLOW, persist_result=True, result_serializer="json", result_storage=result_storage())
def wait(seconds: float = 600.0, test_job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publishes progress, then sleeps in short steps (a stand-in for a long test run) until `seconds` pass."""
    update_own_labels(progress_labels(10, "running", {"waiting": seconds}))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)  # the flow's own "work", not test synchronisation
    return {"waited": seconds}


@flow(name=names.FAIL_FLOW, persist_result=True, result_serializer="json", result_storage=result_storage())
def fail(test_job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fails the way a broken checkout does."""
    raise InfrastructureError("Git clone of student repository failed.")


@flow(name=names.UNPERSISTED_FLOW, persist_result=False)
def unpersisted(test_job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Like a deployment the gateway did not write: completes without persisting its result."""
    return {"unpersisted": True}


TEST_FLOWS = (noop, wait, fail, unpersisted)
