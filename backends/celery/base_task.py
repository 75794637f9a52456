"""The task base class: progress reporting that works from any thread and from async code.

Celery's `update_state()` without a `task_id` reads `self.request.id`, which is thread-local: called from a
helper thread (the work's subprocess reader, an executor) it stores a row with a NULL id. `update_progress`
therefore always passes the task id explicitly; the id is captured on the task's own thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from celery import Task

from common.legacy import Progress

logger = logging.getLogger(__name__)

PROGRESS_STATE = "PROGRESS"


def progress_meta(percentage: int, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `meta` stored with a PROGRESS state: `{"progress": {"percentage", "metadata", "status"}}`."""
    progress = Progress(percentage=max(0, min(100, int(percentage))), metadata=dict(metadata or {}))
    return {"progress": progress.model_dump()}


class BaseTask(Task):
    """Every gateway task derives from this; `update_progress` is the only way tasks report progress."""

    abstract = True
    # The last progress stored by this process, (task id, meta): the same progress again is not stored twice (the
    # task reports "started" and its work reports the same "started" right after). A store round trip saved per
    # repeat; whatever thread reports, a repeat leaves the row as it is, so no lock is needed. Forgotten when a
    # task starts, so a new attempt under the same id (a rerun in the same process) stores its progress again.
    _last_progress: tuple[str, dict[str, Any]] | None = None

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self._last_progress = None

    def update_progress(
        self, percentage: int, metadata: dict[str, Any] | None = None, *, task_id: str | None = None
    ) -> None:
        """Store PROGRESS for `task_id` (default: the task running on this thread). Never raises into the work."""
        tid = task_id or self.request.id
        if not tid:
            # Called outside a task (e.g. a direct call in a test): there is no row to update.
            return
        meta = progress_meta(percentage, metadata)
        if self._last_progress == (tid, meta):
            return
        try:
            self.update_state(task_id=tid, state=PROGRESS_STATE, meta=meta)
        except Exception:  # noqa: BLE001 - progress is best effort; the task's result must not depend on it
            logger.warning("could not store progress for %s", tid, exc_info=True)
        else:
            self._last_progress = (tid, meta)

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
