"""The engine-agnostic work both engines run: check out, test in a sandbox, report; and submission processing.

Public entry points (the Celery tasks and the Prefect flows call only these):

- `run_student_testing(test_job, progress=...) -> dict`: the legacy report tree; raises `InfrastructureError`.
- `run_submission_processing(submission, progress=...) -> dict`: what was recorded; idempotent.
"""
