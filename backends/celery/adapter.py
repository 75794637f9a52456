"""`CeleryAdapter`: the gateway's only door into Celery (`backends.interface.EngineAdapter`).

- Tasks are sent by name (`send_task`), so the gateway never imports task code or `backends.work`.
- The caller's leg id becomes the Celery task id.
- `poll` reads `celery_taskmeta` for many ids in one SQL statement on a pooled engine.
- `workers` uses `inspect` with `limit` = the number of workers known from the last ping, so a call returns as
  soon as they answered instead of waiting out the timeout.
Cheap to construct and thread-safe: the Celery app, the database reader and the worker count are built lazily
under a lock, because the gateway calls adapters from a thread pool.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from backends.celery import names
from backends.celery.states import error_from, phase_for, progress_from
from backends.interface import Health, JobSpec, LegPhase, LegResult, LegState, TaskKind, WorkerInfo
from common.redact import redact_text
from common.settings import Settings

# The message header that marks a shadow run (the task name stays the legacy one).
SHADOW_HEADER = "shadow"


def _plain(value: Any) -> Any:
    """Pydantic models (a TestJob) travel as JSON-ready dicts."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


class CeleryAdapter:
    engine = "celery"

    # Short on purpose: a request thread may be waiting. `limit` makes inspect return before it in steady state.
    ping_timeout: float = 0.5
    inspect_timeout: float = 1.0
    # How long a known worker count is trusted before a fresh ping (a worker may have joined or left).
    worker_count_ttl: float = 30.0

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._app: Any = None
        self._reader: Any = None
        self._reader_ready = False
        self._cancelling: set[str] = set()
        self._known_workers: int | None = None
        self._known_at = 0.0

    # ------------------------------------------------------------------------------------------ lazy parts
    @property
    def app(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from backends.celery.factory import create_app

                    self._app = create_app(self._settings, main="ctutor_gateway_client")
        return self._app

    def _taskmeta(self) -> Any:
        """The SQL reader, or None when results are not in a database (a Redis result backend)."""
        if not self._reader_ready:
            with self._lock:
                if not self._reader_ready:
                    from backends.celery.config import result_database_url

                    url = result_database_url(self._settings)
                    if url is not None:
                        from backends.celery.taskmeta import TaskMetaReader

                        self._reader = TaskMetaReader(url)
                    self._reader_ready = True
        return self._reader

    # ------------------------------------------------------------------------------------------------ submit
    def submit(self, job: JobSpec, leg_id: str, priority: int = names.STUDENT_TESTING_PRIORITY) -> str:
        """Send the job's task by name under `leg_id`; returns the Celery task id (= `leg_id`)."""
        task_name = names.TASK_FOR_KIND[TaskKind(job.kind)]
        if job.kind == TaskKind.STUDENT_TESTING:
            kwargs = {
                "test_job": _plain(job.params["test_job"]),
                "execution_backend_properties": dict(job.properties or {}),
            }
        else:
            kwargs = {"submission": _plain(job.params["submission"])}
        headers = {SHADOW_HEADER: True} if job.shadow else None
        return self.send(task_name, kwargs, leg_id, priority=priority, headers=headers)

    def send(
        self,
        task_name: str,
        kwargs: dict[str, Any],
        task_id: str,
        priority: int | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Any task by name, routed to its queue (also used for the no-op task by health checks and the bench).

        A shadow run keeps its task name; it is marked by a message header (`shadow`) instead."""
        queue = names.QUEUE_FOR_TASK.get(task_name, names.DEFAULT)
        self.app.send_task(
            task_name,
            kwargs=kwargs,
            task_id=task_id,
            queue=queue,
            routing_key=queue,
            priority=priority,
            headers=headers,
        )
        return task_id

    # -------------------------------------------------------------------------------------------------- poll
    def poll(self, leg_ids: list[str]) -> dict[str, LegState]:
        reader = self._taskmeta()
        if reader is None:
            return {leg_id: self._poll_via_backend(leg_id) for leg_id in leg_ids}
        rows = reader.fetch(leg_ids)
        states: dict[str, LegState] = {}
        for leg_id in leg_ids:
            row = rows.get(leg_id)
            if row is None:
                state = LegState(leg_id=leg_id, phase=LegPhase.MISSING, native="PENDING", engine_run_id=leg_id)
            else:
                state = self._state(leg_id, row.status, row.result)
                state.worker = row.worker
                state.queue = row.queue
                if state.phase.is_final:
                    state.finished_at = row.date_done
            states[leg_id] = self._with_cancel(state)
        return states

    def _state(self, leg_id: str, native: str, result: Any) -> LegState:
        phase = phase_for(native, result)
        state = LegState(leg_id=leg_id, phase=phase, native=native, engine_run_id=leg_id)
        if native == "PROGRESS":
            state.progress = progress_from(result)
        if phase in (LegPhase.FAILED, LegPhase.CRASHED, LegPhase.CANCELLED):
            state.error = error_from(result)[0]
        return state

    def _poll_via_backend(self, leg_id: str) -> LegState:
        """Fallback for result backends without SQL (one backend call per id: only for non-database setups)."""
        meta = self.app.backend.get_task_meta(leg_id)
        native = meta.get("status", "PENDING")
        if native == "PENDING":
            return self._with_cancel(LegState(leg_id=leg_id, phase=LegPhase.MISSING, native=native))
        result = meta.get("result")
        if isinstance(result, BaseException):
            result = {"exc_type": type(result).__name__, "exc_message": [str(result)]}
        return self._with_cancel(self._state(leg_id, native, result))

    def _with_cancel(self, state: LegState) -> LegState:
        """A revoke is asynchronous: until the stored state is final, a cancelled leg reads CANCELLING."""
        if state.leg_id in self._cancelling:
            if state.phase.is_final:
                self._cancelling.discard(state.leg_id)
            else:
                state.phase = LegPhase.CANCELLING
        return state

    # ------------------------------------------------------------------------------------------------ result
    def result(self, leg_id: str) -> LegResult:
        return self.results([leg_id])[leg_id]

    def results(self, leg_ids: list[str]) -> dict[str, LegResult]:
        """One pooled query for all of them (`celery_taskmeta`); a backend without SQL reads one by one."""
        reader = self._taskmeta()
        if reader is None:
            found: dict[str, tuple[str, Any] | None] = {}
            for leg_id in leg_ids:
                meta = self.app.backend.get_task_meta(leg_id)
                raw = meta.get("result")
                if isinstance(raw, BaseException):
                    raw = {"exc_type": type(raw).__name__, "exc_message": [str(raw)]}
                found[leg_id] = (meta.get("status", "PENDING"), raw)
        else:
            rows = reader.fetch(leg_ids)
            found = {leg_id: (row.status, row.result) if (row := rows.get(leg_id)) else None for leg_id in leg_ids}
        return {leg_id: self._result_of(leg_id, found[leg_id]) for leg_id in leg_ids}

    @staticmethod
    def _result_of(leg_id: str, stored: tuple[str, Any] | None) -> LegResult:
        if stored is None:
            return LegResult(leg_id=leg_id, phase=LegPhase.MISSING)
        native, raw = stored
        phase = phase_for(native, raw)
        if phase is LegPhase.SUCCEEDED:
            return LegResult(leg_id=leg_id, phase=phase, report=raw if isinstance(raw, dict) else {"result": raw})
        if phase in (LegPhase.FAILED, LegPhase.CRASHED, LegPhase.CANCELLED):
            error, error_type = error_from(raw)
            return LegResult(leg_id=leg_id, phase=phase, error=error, error_type=error_type)
        return LegResult(leg_id=leg_id, phase=phase)

    def taskmeta_row(self, leg_id: str) -> dict[str, Any] | None:
        """The raw celery_taskmeta row as a dict (for `gateway worker test-job`), or None."""
        reader = self._taskmeta()
        if reader is None:
            return None
        row = reader.fetch([leg_id]).get(leg_id)
        return None if row is None else dict(row.__dict__)

    # ------------------------------------------------------------------------------------------------ cancel
    def cancel(self, leg_id: str) -> LegState:
        """Revoke and terminate; the leg reads CANCELLING until the worker has stored REVOKED."""
        current = self.poll([leg_id])[leg_id]
        if current.phase.is_final:
            return current
        self.app.control.revoke(leg_id, terminate=True, signal="SIGTERM")
        self._cancelling.add(leg_id)
        current.phase = LegPhase.CANCELLING
        return current

    # ----------------------------------------------------------------------------------------------- workers
    def _expected_workers(self) -> int:
        now = time.monotonic()
        ttl = self.worker_count_ttl if self._known_workers else min(self.worker_count_ttl, 5.0)
        if self._known_workers is None or now - self._known_at > ttl:
            # The filesystem broker is polled, not pushed: give its replies a little longer.
            polled = self._settings.broker_url().startswith("filesystem://")
            replies = self.app.control.ping(timeout=self.ping_timeout * (3 if polled else 1)) or []
            self._known_workers, self._known_at = len(replies), now
        return self._known_workers

    def workers(self) -> list[WorkerInfo]:
        expected = self._expected_workers()
        if expected == 0:
            return []
        inspect = self.app.control.inspect(timeout=self.inspect_timeout, limit=expected)
        stats = inspect.stats() or {}
        queues = inspect.active_queues() or {}
        active = inspect.active() or {}
        if len(stats) != expected:
            self._known_workers, self._known_at = len(stats), time.monotonic()
        infos = []
        for name, stat in sorted(stats.items()):
            infos.append(
                WorkerInfo(
                    name=name,
                    queues=sorted(q.get("name", "") for q in queues.get(name, []) or []),
                    active=len(active.get(name, []) or []),
                    uptime_seconds=stat.get("uptime"),
                    details={
                        "pid": stat.get("pid"),
                        "concurrency": (stat.get("pool") or {}).get("max-concurrency"),
                        "total": stat.get("total", {}),
                    },
                )
            )
        return infos

    # ------------------------------------------------------------------------------------------------ health
    def broker_reachable(self) -> bool:
        if self._settings.broker_url().startswith("filesystem://"):
            return self._settings.broker_folder().is_dir()
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not reachable"; the reason is in the error text
            return False

    def backend_reachable(self) -> bool:
        reader = self._taskmeta()
        if reader is not None:
            try:
                return bool(reader.reachable())
            except Exception:  # noqa: BLE001
                return False
        try:
            self.app.backend.get_task_meta("gateway-health-probe")
            return True
        except Exception:  # noqa: BLE001
            return False

    def health(self) -> Health:
        checks = {"broker": self.broker_reachable(), "backend": self.backend_reachable()}
        count, error = 0, None
        if checks["broker"]:
            try:
                count = len(self.workers())
            except Exception as exc:  # noqa: BLE001
                error = redact_text(f"{type(exc).__name__}: {exc}")
        checks["workers"] = count > 0
        if error is None and not all(checks.values()):
            error = "unreachable: " + ", ".join(name for name, ok in checks.items() if not ok)
        return Health(healthy=all(checks.values()), engine=self.engine, checks=checks, workers=count, error=error)

    # ---------------------------------------------------------------------------------------------- queues
    def queue_depths(self) -> dict[str, int]:
        from backends.celery import queues

        url = self._settings.broker_url()
        if url.startswith("filesystem://"):
            return queues.filesystem_depths(self._settings.broker_folder() / "out")
        if url.startswith(("redis://", "rediss://", "unix://")):
            return queues.redis_depths(url)
        depths = {}
        with self.app.connection_for_write() as conn, conn.channel() as channel:
            for queue in names.ALL_QUEUES:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
        return depths

    def close(self) -> None:
        if self._reader is not None:
            self._reader.dispose()
        if self._app is not None:
            self._app.close()
