"""A platform Celery worker of the Celery era sharing the gateway's broker and result table (issue 25.4).

Written from the platform's public facts, not copied: its own Celery app with its own task names (the platform
registered each task as `ctutor_backend.tasks.<name>`, so `student_testing` collides with the gateway's), Celery's
STOCK database result backend (`db+postgresql://...`, no gateway code), and the pickle result serializer: the
platform pinned Celery 5.3, whose database backend pickled every result whatever the serializer. It answers the
platform's shape `{"success": True, "results": {..., "score": 80}}` (a score it gave failing students too).
Started by a test as `python -m celery -A tests.support.platform_celery_worker worker -Q high_priority,...`.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from backends.celery.config import result_database_url
from common.settings import Settings

PLATFORM_SCORE = 80
PLATFORM_RESULTS = {"score": PLATFORM_SCORE, "max_score": 100, "passed": 4, "total": 5}

_settings = Settings()
_db = result_database_url(_settings)
assert _db is not None, "the platform worker shares the gateway's celery_taskmeta table"

app = Celery("ctutor_backend")
app.conf.update(
    broker_url=_settings.broker_url(),
    result_backend=f"db+{_db}",  # Celery's own DatabaseBackend
    result_extended=True,
    result_serializer="pickle",
    task_serializer="json",
    # The gateway's messages are JSON; only what it stores is pickled (accepting pickle would refuse root, too).
    accept_content=["json"],
    task_track_started=True,
    include=[],
)


@app.task(name="ctutor_backend.tasks.student_testing", bind=True)
def student_testing(self: Any, test_job: dict[str, Any], execution_backend_properties: Any = None) -> dict[str, Any]:
    return {"success": True, "results": PLATFORM_RESULTS, "task_id": self.request.id}


@app.task(name="ctutor_backend.tasks.release_course")
def release_course(course_id: str) -> dict[str, Any]:
    """One of the platform's own task names the gateway never sends: it only shows the app is the platform's."""
    return {"released": course_id}
