"""The exact key sets of the legacy contract's responses, shared by every test that acts as a legacy client."""

from __future__ import annotations

# The contract's `TestRunResponse` keys; the gateway answers these plus `ResultGet`'s (RUN_ANSWER_KEYS).
RUN_KEYS = {
    "id", "submit", "course_member_id", "course_content_id", "course_submission_group_id", "execution_backend_id",
    "test_system_id", "result", "result_json", "properties", "version_identifier", "status", "submission_flow_run_id",
}  # fmt: skip
RESULT_META_KEYS = {"course_content_type_id", "created_at", "updated_at", "created_by", "updated_by"}
GET_KEYS = (RUN_KEYS - {"submission_flow_run_id"}) | RESULT_META_KEYS
# `POST /tests`: a superset (the platform's CLI parses the answer as a `ResultGet`).
RUN_ANSWER_KEYS = RUN_KEYS | RESULT_META_KEYS
LIST_KEYS = GET_KEYS - {"result_json"}
TASK_INFO_KEYS = {
    "task_id", "task_name", "status", "created_at", "started_at", "finished_at", "progress", "error", "worker",
    "queue", "retries",
}  # fmt: skip
# `GET /tasks` items: `TaskInfo` plus the platform's list keys (and the gateway's own status word).
TASK_LIST_ITEM_KEYS = TASK_INFO_KEYS | {"task_status", "date_done", "has_result", "has_error"}
TASK_RESULT_KEYS = {"task_id", "status", "result", "error", "created_at", "started_at", "finished_at", "progress"}
PROGRESS_KEYS = {"percentage", "metadata", "status"}
BACKEND_KEYS = {"id", "type", "slug", "properties", "created_at", "updated_at"}
