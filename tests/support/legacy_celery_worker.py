"""An old Celery worker of the platform's Celery era, for the mixed-fleet tests (issue 12.11).

Written from the legacy contract, not copied: it consumes the gateway's `high_priority` queue under the legacy
task name, ignores the job and answers the legacy result shape `{"success": True, "results": {..., "score"}}`,
stored with the serializer named by `LEGACY_RESULT_SERIALIZER` (the platform's workers used pickle).
Started by a test as `python -m celery -A tests.support.legacy_celery_worker worker -Q high_priority`.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from backends.celery.config import celery_config
from common.settings import Settings

SERIALIZER = os.environ.get("LEGACY_RESULT_SERIALIZER", "pickle")
LEGACY_SCORE = 0.75
SUMMARY = {"total": 4, "passed": 3, "failed": 1, "skipped": 0}
LEGACY_REPORT = {"name": "legacy", "type": "report", "status": "COMPLETED", "result": "FAILED",
                 "summary": SUMMARY, "tests": [], "score": LEGACY_SCORE}  # fmt: skip

app = Celery("legacy_worker")
app.conf.update(
    {
        **celery_config(Settings()),  # the same broker and result table as the gateway's own workers
        "include": [],
        "result_serializer": SERIALIZER,
        # It receives the gateway's JSON messages; only what it stores is pickled.
        "accept_content": ["json"],
    }
)


@app.task(name="ctutor_backend.tasks.student_testing")
def student_testing(test_job: dict[str, Any], execution_backend_properties: Any = None, **_: Any) -> dict[str, Any]:
    return {"success": True, "results": LEGACY_REPORT}
