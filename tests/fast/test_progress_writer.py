"""The worker's progress writer: a task never waits for a PROGRESS store, the newest value wins, and nothing of a
task is written after `settle` (which the result store calls before the final state)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from backends.celery.progress_writer import ProgressWriter

pytestmark = pytest.mark.fast


class GatedStore:
    """Records each store; the first one blocks until `gate` is set."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, int]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.written = threading.Condition()

    def __call__(self, task_id: str, meta: dict[str, Any], request: Any) -> None:
        self.entered.set()
        self.gate.wait()
        with self.written:
            self.stored.append((task_id, meta["percentage"]))
            self.written.notify_all()


def test_the_newest_value_wins_and_settle_drops_the_rest() -> None:
    store = GatedStore()
    writer = ProgressWriter(store, min_interval=3600)  # after its first write a task is held: only settle ends it
    writer.submit("t", {"percentage": 10})  # returns at once although the store blocks
    assert store.entered.wait(10)
    writer.submit("t", {"percentage": 20})
    writer.submit("t", {"percentage": 30})

    settled = threading.Event()
    threading.Thread(target=lambda: (writer.settle("t"), settled.set()), daemon=True).start()
    assert not settled.wait(0.2)  # the write under way holds it
    store.gate.set()
    assert settled.wait(10)
    assert store.stored == [("t", 10)]  # 20 was superseded by 30, and 30 was dropped by the end

    writer.submit("u", {"percentage": 50})  # another task's first value is written at once
    with store.written:
        assert store.written.wait_for(lambda: ("u", 50) in store.stored, timeout=10)
    assert ("t", 20) not in store.stored and ("t", 30) not in store.stored


def test_a_failing_store_does_not_stop_the_writer() -> None:
    calls: list[int] = []
    done = threading.Event()

    def store(task_id: str, meta: dict[str, Any], request: Any) -> None:
        calls.append(meta["percentage"])
        if len(calls) == 1:
            raise OSError("database away")
        done.set()

    writer = ProgressWriter(store, min_interval=0)
    writer.submit("a", {"percentage": 1})
    writer.submit("b", {"percentage": 2})
    assert done.wait(10)
    assert sorted(calls) == [1, 2]
