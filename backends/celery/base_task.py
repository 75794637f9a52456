"""The task base class: progress reporting that works from any thread and from async code.

Celery's `update_state()` without a `task_id` reads `self.request.id`, which is thread-local: called from a
helper thread (the work's subprocess reader, an executor) it stores a row with a NULL id. `update_progress`
therefore always passes the task id explicitly; the id is captured on the task's own thread. Progress stores are
coalesced (`backends.celery.progress`): a test run reports per test, a client reads about once a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from celery import Task

from backends.celery.progress import ProgressCoalescer
from common.legacy import Progress
from common.settings import get_settings

PROGRESS_STATE = "PROGRESS"


def progress_meta(percentage: int, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `meta` stored with a PROGRESS state: `{"progress": {"percentage", "metadata", "status"}}`."""
    progress = Progress(percentage=max(0, min(100, int(percentage))), metadata=dict(metadata or {}))
    return {"progress": progress.model_dump()}


class BaseTask(Task):
    """Every gateway task derives from this; `update_progress` is the only way tasks report progress."""

    abstract = True
    # This process's progress stores for this task type, made on first use (in the pool process that runs it).
    _coalescer: ProgressCoalescer | None = None

    @property
    def progress(self) -> ProgressCoalescer:
        if self._coalescer is None:
            self._coalescer = ProgressCoalescer(self._store_progress, get_settings().celery_progress_interval)
        return self._coalescer

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Bind this run's progress store to its backend and request, taken here on the task's thread: Celery keeps
        both per thread, and a held progress is stored by a timer thread, which would otherwise build a backend of
        its own (engine, pool, tables: measured 28 ms per job) and store a row without the task's name and args."""
        backend, request = self.backend, self.request

        def store(tid: str, meta: dict[str, Any]) -> None:
            backend.store_result(tid, meta, PROGRESS_STATE, request=request)

        # Celery's tracer stored STARTED just before this call (with `task_track_started`): the first interval is on.
        self.progress.start(task_id, store, row_written=bool(self.track_started))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The task's body, then its progress closed: a progress held back is dropped, and none is stored once
        the body ended, so none can land after (and over) the final state the tracer stores next."""
        try:
            return super().__call__(*args, **kwargs)
        finally:
            if self.request.id:
                self.progress.close(self.request.id)

    def update_progress(
        self, percentage: int, metadata: dict[str, Any] | None = None, *, task_id: str | None = None
    ) -> None:
        """Report PROGRESS for `task_id` (default: the task running on this thread). Stored at once, or folded
        into the next store when one was made less than `celery_progress_interval` ago. Never raises."""
        tid = task_id or self.request.id
        if not tid:
            # Called outside a task (e.g. a direct call in a test): there is no row to update.
            return
        self.progress.report(tid, progress_meta(percentage, metadata))

    def _store_progress(self, task_id: str, meta: dict[str, Any]) -> None:
        self.update_state(task_id=task_id, state=PROGRESS_STATE, meta=meta)

    async def update_progress_async(
        self, percentage: int, metadata: dict[str, Any] | None = None, *, task_id: str | None = None
    ) -> None:
        """The same from async code: the blocking store runs in a thread, the id is captured here first."""
        tid = task_id or self.request.id
        await asyncio.to_thread(self.update_progress, percentage, metadata, task_id=tid)

    def progress_reporter(self) -> Callable[[int, dict[str, Any] | None], None]:
        """A callable bound to the current task id, safe to hand to another thread."""
        tid = self.request.id

        def report(percentage: int, metadata: dict[str, Any] | None = None) -> None:
            self.update_progress(percentage, metadata, task_id=tid)

        return report
