"""Flow and deployment names, shared by the flows (which register them) and the adapter (which looks them up).

Kept free of any Prefect import so the gateway can read them.
"""

from __future__ import annotations

from backends.interface import TaskKind

DEPLOYMENT = "system"

TEST_ASSIGNMENT_FLOW = "test-assignment"
SUBMIT_RESULT_FLOW = "submit-result"

# Test and benchmark flows: served only with `gateway prefect serve --test-flows`.
NOOP_FLOW = "gateway-noop"
WAIT_FLOW = "gateway-test-wait"
FAIL_FLOW = "gateway-test-fail"
UNPERSISTED_FLOW = "gateway-test-unpersisted"

DEFAULT_DEPLOYMENTS: dict[TaskKind, str] = {
    TaskKind.STUDENT_TESTING: f"{TEST_ASSIGNMENT_FLOW}/{DEPLOYMENT}",
    TaskKind.SUBMISSION_PROCESSING: f"{SUBMIT_RESULT_FLOW}/{DEPLOYMENT}",
}

# Where the shipped flows persist their JSON results, under `settings.data_dir`.
RESULTS_SUBDIR = "prefect-results"
