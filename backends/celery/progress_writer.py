"""PROGRESS rows written beside the work, not in its way: one writer thread per worker process, latest value wins.

A test run reports progress on every pytest event (started, cloned, collected, each test, done). Stored one by
one on the task's thread, those writes cost a short example job more time than its tests (about a fifth of a
worker's time in `bench/bench_e2e.py`'s profile). Progress is a display: the gateway shows the latest value.
So a task hands its progress here and goes on; the writer stores, per task, the newest value it holds, at most
once every `min_interval` (the first one at once). Values that were superseded meanwhile are never written.

Ordering with the end: before a task's final state is stored, `settle(task_id)` drops what is still pending
for it and waits for a write of it that is under way, so no PROGRESS can land after (and over) the final row.
A store that fails is logged and dropped: the next value or the final state replaces it anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# Per task, PROGRESS is stored at most this often; a job shorter than this stores its first progress only.
MIN_INTERVAL = 0.25

Store = Callable[[str, dict[str, Any], Any], None]


class ProgressWriter:
    """Coalesces each task's progress and stores it from one daemon thread (started on first use)."""

    def __init__(self, store: Store, min_interval: float = MIN_INTERVAL) -> None:
        self._store = store
        self._min_interval = min_interval
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[dict[str, Any], Any]] = {}
        self._last: dict[str, float] = {}
        self._writing: str | None = None
        self._thread: threading.Thread | None = None

    def submit(self, task_id: str, meta: dict[str, Any], request: Any = None) -> None:
        """Keep `meta` as the task's newest progress; returns at once."""
        with self._cond:
            self._pending[task_id] = (meta, request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="progress-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def settle(self, task_id: str) -> None:
        """The task ends: forget its pending progress and wait until no write of it is under way."""
        with self._cond:
            self._pending.pop(task_id, None)
            self._cond.wait_for(lambda: self._writing != task_id)
            self._last.pop(task_id, None)

    def _due(self, now: float) -> tuple[str | None, float | None]:
        """The next task whose progress may be written now, or how long until one may."""
        wait: float | None = None
        for task_id in self._pending:
            ready_at = self._last.get(task_id, 0.0) + self._min_interval
            if ready_at <= now:
                return task_id, None
            wait = ready_at - now if wait is None else min(wait, ready_at - now)
        return None, wait

    def _run(self) -> None:
        while True:
            with self._cond:
                task_id, wait = self._due(time.monotonic())
                while task_id is None:
                    self._cond.wait(timeout=wait)
                    task_id, wait = self._due(time.monotonic())
                meta, request = self._pending.pop(task_id)
                self._writing = task_id
            try:
                self._store(task_id, meta, request)
            except Exception:  # noqa: BLE001 - progress is best effort; a newer value or the end replaces it
                logger.warning("could not store progress for %s", task_id, exc_info=True)
            finally:
                with self._cond:
                    self._writing = None
                    self._last[task_id] = time.monotonic()
                    self._cond.notify_all()
