"""Progress as flow-run labels: written by the flow, read back by the adapter from the same status query.

Why labels and not progress artifacts: labels are a column of the flow run itself, so the one
`POST /flow_runs/filter` that returns many runs' states returns their progress too. Artifacts live in another
table and would cost one more query per poll (and they keep every update as history nobody reads).
Label values are scalars (str, int, float, bool), so the metadata dict travels as a JSON string.
"""

from __future__ import annotations

import json
from typing import Any

from common.legacy import Progress

PERCENTAGE = "progress.percentage"
STAGE = "progress.stage"
METADATA = "progress.metadata"
ERROR_TYPE = "error.type"
ERROR_KIND = "error.kind"


def progress_labels(percentage: int, stage: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The labels a flow patches onto its own run for one progress event."""
    return {
        PERCENTAGE: int(percentage),
        STAGE: stage,
        METADATA: json.dumps({"stage": stage, **(metadata or {})}, default=str, sort_keys=True),
    }


def progress_from_labels(labels: dict[str, Any] | None) -> Progress | None:
    """The legacy progress shape from a run's labels, or None when the flow never published any."""
    if not labels or PERCENTAGE not in labels:
        return None
    try:
        metadata = json.loads(labels.get(METADATA) or "{}")
    except (TypeError, ValueError):
        metadata = {}
    if not isinstance(metadata, dict):
        metadata = {}
    metadata.setdefault("stage", labels.get(STAGE))
    try:
        percentage = int(labels[PERCENTAGE])
    except (TypeError, ValueError):
        percentage = 0
    return Progress(percentage=percentage, metadata=metadata, status="running")
