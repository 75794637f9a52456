"""Progress stores, coalesced: at most one PROGRESS store per task every `interval`, the latest progress wins.

Why: the work reports a progress per test, and the tests of an assignment often end within milliseconds of each
other. Each report was a store: a round trip and a row rewrite on the result database, inside the task's own time,
and then a leg rewrite in the gateway's next poll. A client reads progress every second or so; what it sees does
not change when reports closer together than `interval` are folded into the latest one.

The rules, per task id:
- the first report, and any report at least `interval` after the last store, is stored at once; Celery's STARTED
  store counts as the first store (a task's "started" at 0 % tells nothing the STARTED row does not);
- a report sooner than that is held; when the interval ends a timer stores the latest one held;
- a report equal to the last stored one (nothing held) is not stored again;
- `close` (the task's work returned or raised, before Celery stores the final state) drops what is held and
  waits for a store in progress: no PROGRESS is written after it, so none can overwrite the final state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Meta = dict[str, Any]
Store = Callable[[str, Meta], None]

# How many ended runs a process remembers (to ignore their late reports); older ones are forgotten.
_CLOSED_KEPT = 64


@dataclass
class _TaskProgress:
    store: Store | None = None  # this run's own, bound on its thread (`start`); else the coalescer's
    stored: Meta | None = None
    stored_at: float | None = None
    held: Meta | None = None
    timer: threading.Timer | None = field(default=None, repr=False)
    closed: bool = False


class ProgressCoalescer:
    """Folds one process's progress reports into few stores (see the module docstring); safe from any thread."""

    def __init__(self, store: Store, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self.interval = interval
        self._clock = clock
        # Held while a store runs too: `close` returns only once no store of that task is under way.
        self._lock = threading.Lock()
        # Closed runs stay known for a while, so a late report (a helper thread of the work) stores nothing.
        self._tasks: OrderedDict[str, _TaskProgress] = OrderedDict()

    def start(self, task_id: str, store: Store | None = None, row_written: bool = False) -> None:
        """A (new) run of `task_id` in this process: nothing of it stored yet, so its first report is stored at once.

        `store`: how this run's progress is written, from whichever thread stores it (a held report is stored by a
        timer thread). `row_written`: the run's row was written just now (Celery's STARTED store), which opens the
        first interval: a report right after it (the task's "started" at 0 %) is held like any other."""
        with self._lock:
            if (earlier := self._tasks.pop(task_id, None)) is not None:
                _end(earlier)
            self._tasks[task_id] = _TaskProgress(store=store, stored_at=self._clock() if row_written else None)

    def report(self, task_id: str, meta: Meta) -> None:
        with self._lock:
            task = self._tasks.setdefault(task_id, _TaskProgress())
            if task.closed:
                return
            if task.held is None and meta == task.stored:
                return
            now = self._clock()
            if task.stored_at is None or now - task.stored_at >= self.interval:
                self._store_now(task_id, task, meta)
                return
            task.held = None if meta == task.stored else meta
            if task.held is not None and task.timer is None:
                task.timer = threading.Timer(task.stored_at + self.interval - now, self._store_held, (task_id,))
                task.timer.daemon = True
                task.timer.start()

    def close(self, task_id: str) -> None:
        """The task's work ended: what is held is dropped (the final state supersedes it), no later store."""
        with self._lock:
            _end(self._tasks.setdefault(task_id, _TaskProgress()))
            closed = [key for key, known in self._tasks.items() if known.closed]
            for key in closed[: max(0, len(closed) - _CLOSED_KEPT)]:
                del self._tasks[key]

    def _store_held(self, task_id: str) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.closed or task.timer is not threading.current_thread():
                return  # ended, or this timer was replaced (its cancel came too late to stop it)
            task.timer = None
            if task.held is not None:
                self._store_now(task_id, task, task.held)

    def _store_now(self, task_id: str, task: _TaskProgress, meta: Meta) -> None:
        """Under the lock. A failed store is logged and forgotten: progress is best effort, the task goes on."""
        task.held = None
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        try:
            (task.store or self._store)(task_id, meta)
        except Exception:  # noqa: BLE001 - progress must never break the task's work
            logger.warning("could not store progress for %s", task_id, exc_info=True)
            return
        task.stored, task.stored_at = meta, self._clock()


def _end(task: _TaskProgress) -> None:
    task.closed, task.held = True, None
    if task.timer is not None:
        task.timer.cancel()
        task.timer = None
