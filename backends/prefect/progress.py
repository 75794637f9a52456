"""Publish the work's progress events as labels on the current flow run (runs inside a flow, imports Prefect).

Best effort: a failed label update is logged and dropped, never allowed to fail the student's run.
"""

from __future__ import annotations

import logging
from typing import Any

from backends.prefect.labels import progress_labels
from backends.work.progress import ProgressEvent

log = logging.getLogger(__name__)


def update_own_labels(labels: dict[str, Any]) -> None:
    """PATCH /flow_runs/{id}/labels for the flow run this code is executing in (merged with existing labels)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(run_id, labels)
    except Exception as exc:  # noqa: BLE001 - progress must never break the run
        log.warning("could not publish labels on flow run %s: %s", run_id, type(exc).__name__)


def publish_progress(event: ProgressEvent) -> None:
    """The `ProgressCallback` the flows hand to the work."""
    update_own_labels(progress_labels(event.percentage, event.stage, event.metadata))
