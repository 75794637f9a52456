"""The Celery configuration, built from the one settings object; every reliability choice says why.

`celery_config(settings)` is a plain dict so the worker, the adapter and the benchmark build identical apps, and
a test can read what a worker will run with.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab
from kombu import Queue

from backends.celery import fs_transport, names
from common.settings import Settings

POOLED_BACKEND = "backends.celery.result_store:PooledDatabaseBackend"
# "For ever" in practice: at 2 s between tries, about 60 years.
STORE_RETRIES_UNBOUNDED = 10**9


def visibility_timeout(settings: Settings) -> int:
    """Seconds before Redis hands an unacknowledged task to another worker.

    Above the hard time limit by default: a task still running legitimately must never be delivered twice.
    """
    if settings.celery_visibility_timeout is not None:
        return settings.celery_visibility_timeout
    return settings.task_time_limit + 300


def result_database_url(settings: Settings) -> str | None:
    """The SQLAlchemy URL of the `celery_taskmeta` database, or None when results live elsewhere (e.g. Redis)."""
    url = settings.result_backend_url()
    return url[3:] if url.startswith("db+") else None


def _result_backend(settings: Settings) -> dict[str, Any]:
    if settings.celery_result_backend is not None:
        # An explicit CELERY_RESULT_BACKEND is used verbatim (Celery's stock backends; the benchmark's references).
        return {"result_backend": settings.celery_result_backend.get_secret_value()}
    db_url = result_database_url(settings)
    assert db_url is not None  # the derived URL is always a database
    return {
        "result_backend": POOLED_BACKEND,
        "database_url": db_url,
        # Create celery_taskmeta when the backend starts, so a poll before the first result finds the table.
        "database_create_tables_at_setup": True,
    }


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.uses_embedded_broker and settings.celery_broker_url is None:
        folder = settings.broker_folder()
        return {
            # Producers and consumers share one folder: every local process sees the same queues.
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            # Processed messages are not kept: the folder would grow without bound on a dev machine.
            "store_processed": False,
            "processed_folder": str(folder / "processed"),
            # The exchange table for fanout: broadcast (inspect, revoke) works across processes.
            "control_folder": str(folder / "control"),
            # Messages and exchange tables are written here first, then renamed into place (fs_transport.py).
            "staging_folder": str(folder / fs_transport.STAGING),
            # The transport polls the folder; 0.2 s keeps a job's and a ping's latency low for one listdir.
            "polling_interval": 0.2,
        }
    vt = visibility_timeout(settings)
    return {
        # Above the hard time limit: an unacked message is redelivered only when its worker is really gone.
        "visibility_timeout": vt,
        # Sweep for abandoned messages often enough that a short timeout (tests) is honoured promptly.
        "unacked_restore_interval": max(1, min(10, vt // 4)),
        "unacked_restore_throttle": 1 if vt < 60 else 10,
        # Serve the priority sub-queues in order, so a priority-8 message is not starved by round robin.
        "queue_order_strategy": "priority",
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Everything the app needs; the same dict for worker, adapter and benchmark."""
    fs_transport.install()  # `filesystem://` is the embedded broker's safe channel in every process
    config: dict[str, Any] = {
        "broker_url": settings.broker_url(),
        "broker_transport_options": _transport_options(settings),
        "broker_connection_retry_on_startup": True,
        **_result_backend(settings),
        # JSON only: no pickle means no code runs from a message, and celery_taskmeta stays readable by SQL.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # name, worker, queue, args, kwargs in celery_taskmeta: the row alone tells what ran where.
        "result_extended": True,
        # A STARTED row tells "running" from "still queued" (Celery otherwise says PENDING for both).
        "task_track_started": True,
        # Acknowledge after the task finished: a worker that dies mid-task leaves the message to be redelivered.
        "task_acks_late": True,
        # A pool child killed mid-task (OOM, SIGKILL) requeues the message instead of acking it as failed.
        "task_reject_on_worker_lost": True,
        # One reserved message per process: long test runs are not hoarded by a busy worker.
        "worker_prefetch_multiplier": 1,
        # With acks_late a lost broker connection would redeliver running tasks; cancel them so none runs twice.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # The soft limit raises inside the task (it can still report); the hard limit kills the child.
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        # Results are kept this long; celery.backend_cleanup (below) deletes older rows.
        "result_expires": timedelta(seconds=settings.result_expires_seconds),
        # The result store down: a worker keeps retrying its store (STARTED, progress, the result) until the
        # database is back, and only then is the message acknowledged (acks_late). A bounded retry would end in
        # BackendStoreError, which Celery treats as an internal error and acknowledges: the job would be lost.
        # If the worker dies while it waits, the message is still unacknowledged and runs again.
        "result_backend_always_retry": True,
        "result_backend_max_retries": STORE_RETRIES_UNBOUNDED,
        "result_backend_base_sleep_between_retries_ms": 100,
        "result_backend_max_sleep_between_retries_ms": 2000,
        # A redelivered message whose task already stored SUCCESS is not run again (the stored result stands).
        "worker_deduplicate_successful_tasks": True,
        "task_queues": [Queue(name, routing_key=name) for name in names.ALL_QUEUES],
        "task_default_queue": names.DEFAULT,
        "task_default_routing_key": names.DEFAULT,
        "task_routes": {task: {"queue": queue, "routing_key": queue} for task, queue in names.QUEUE_FOR_TASK.items()},
        "include": list(names.TASK_MODULES),
        # The result cleanup job: beat sends Celery's built-in cleanup hourly (the database backend cannot
        # expire rows by itself).
        "beat_schedule": {
            "result-cleanup": {
                "task": "celery.backend_cleanup",
                "schedule": crontab(minute="17"),
                "options": {"queue": names.DEFAULT, "expires": 3600},
            }
        },
        "beat_schedule_filename": str(settings.data_dir / "celerybeat-schedule"),
        "timezone": "UTC",
        "enable_utc": True,
    }
    return config
