"""Task and queue names: the wire contract with legacy clients and with every worker, in one place.

Kept free of Celery imports so the gateway can route by name without loading any engine code.
"""

from __future__ import annotations

from backends.interface import TaskKind

STUDENT_TESTING = "ctutor_backend.tasks.student_testing"
SUBMISSION_PROCESSING = "ctutor_backend.tasks.submission_processing"
NOOP = "ctutor_backend.tasks.noop"

HIGH_PRIORITY = "high_priority"
DEFAULT = "default"
LOW_PRIORITY = "low_priority"
# A queue only the gateway's own workers consume (the platform's workers never heard of it): a run whose first
# attempt another worker on the shared queues answered unreadably is run again here, so it avoids that worker.
GATEWAY_ONLY = "gateway_only"
ALL_QUEUES: tuple[str, ...] = (HIGH_PRIORITY, DEFAULT, LOW_PRIORITY, GATEWAY_ONLY)

# The task modules every worker imports (`include`); test-only modules are added per worker on the command line.
TASK_MODULES: tuple[str, ...] = ("backends.celery.tasks",)

TASK_FOR_KIND: dict[TaskKind, str] = {
    TaskKind.STUDENT_TESTING: STUDENT_TESTING,
    TaskKind.SUBMISSION_PROCESSING: SUBMISSION_PROCESSING,
}

# Routing: student testing is what a student waits for; everything else shares the default queue.
QUEUE_FOR_TASK: dict[str, str] = {
    STUDENT_TESTING: HIGH_PRIORITY,
    SUBMISSION_PROCESSING: DEFAULT,
    NOOP: DEFAULT,
    "celery.backend_cleanup": DEFAULT,
}

# The legacy contract: student testing is sent with priority 8.
STUDENT_TESTING_PRIORITY = 8

# PostgreSQL NOTIFY channel: the result store announces each task id whose final state it just committed.
COMPLETIONS_CHANNEL = "ctutor_task_final"
