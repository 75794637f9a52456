"""A task's progress stores are coalesced: at most one every `celery_progress_interval`, the latest wins, none after
the task's body ended (so none can land over its final state). The clock is a test clock: "within the interval" is
decided by it, not by how fast this machine runs; only the held store's timer runs on real time."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from celery import Celery

from backends.celery.base_task import BaseTask
from backends.celery.progress import ProgressCoalescer

pytestmark = pytest.mark.fast


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Stores:
    """The store callback: records every store and signals each one."""

    def __init__(self) -> None:
        self.done: list[tuple[str, Any]] = []
        self.stored = threading.Condition()

    def __call__(self, task_id: str, meta: dict[str, Any]) -> None:
        with self.stored:
            self.done.append((task_id, meta["n"]))
            self.stored.notify_all()

    def wait_for(self, count: int) -> list[tuple[str, Any]]:
        with self.stored:
            assert self.stored.wait_for(lambda: len(self.done) >= count, timeout=30), self.done
            return list(self.done)


def test_every_change_is_stored_with_no_interval_and_a_repeat_never() -> None:
    stores = Stores()
    progress = ProgressCoalescer(stores, interval=0)
    for n in (0, 0, 20, 20, 30):
        progress.report("a", {"n": n})
    progress.report("b", {"n": 30})
    progress.report("b", {"n": 30})
    progress.start("b")  # a new run under the same id stores its progress again
    progress.report("b", {"n": 30})
    assert stores.done == [("a", 0), ("a", 20), ("a", 30), ("b", 30), ("b", 30)]


def test_reports_within_the_interval_are_folded_into_the_latest_stored_when_it_ends() -> None:
    stores, clock = Stores(), Clock()
    progress = ProgressCoalescer(stores, interval=0.05, clock=clock)
    progress.start("a")
    progress.report("a", {"n": 0})  # the first: at once
    for n in (1, 2, 3):
        progress.report("a", {"n": n})  # the clock stands still: all within the interval, held
    assert stores.done == [("a", 0)]
    assert stores.wait_for(2) == [("a", 0), ("a", 3)]  # the timer stored the latest only
    clock.now += 1
    progress.report("a", {"n": 4})  # past the interval: at once
    assert stores.done == [("a", 0), ("a", 3), ("a", 4)]


def test_the_started_row_opens_the_first_interval() -> None:
    """With Celery's STARTED just stored, the task's "started" at 0 % is held, then superseded by the next report."""
    stores, clock = Stores(), Clock()
    progress = ProgressCoalescer(stores, interval=0.05, clock=clock)
    progress.start("a", row_written=True)
    progress.report("a", {"n": 0})
    progress.report("a", {"n": 20})
    assert stores.wait_for(1) == [("a", 20)]


def test_a_held_report_equal_to_the_stored_one_is_not_stored_again() -> None:
    stores, clock = Stores(), Clock()
    progress = ProgressCoalescer(stores, interval=0.05, clock=clock)
    progress.report("a", {"n": 0})
    progress.report("a", {"n": 1})
    progress.report("a", {"n": 0})  # back to what is stored: nothing is held any more
    timer = progress._tasks["a"].timer
    assert timer is not None
    timer.join(30)  # it ran and found nothing held
    clock.now += 1
    progress.report("a", {"n": 0})
    assert stores.done == [("a", 0)]


def test_nothing_is_stored_once_the_task_body_ended() -> None:
    """`close` drops the held report and cancels its timer; a late report of the ended run stores nothing."""
    stores, clock = Stores(), Clock()
    progress = ProgressCoalescer(stores, interval=0.05, clock=clock)
    progress.start("a")
    progress.report("a", {"n": 0})
    progress.report("a", {"n": 1})
    timer = progress._tasks["a"].timer
    assert timer is not None
    progress.close("a")
    timer.join(30)  # its time came and went (cancelled, or it found the run ended)
    clock.now += 1
    progress.report("a", {"n": 2})
    assert stores.done == [("a", 0)]


def test_a_failed_store_is_retried_by_the_next_report_and_never_raises() -> None:
    calls: list[Any] = []

    def flaky(task_id: str, meta: dict[str, Any]) -> None:
        calls.append(meta["n"])
        if len(calls) == 1:
            raise ConnectionError("result database down")

    progress = ProgressCoalescer(flaky, interval=60, clock=Clock())
    progress.report("a", {"n": 0})  # fails: nothing counts as stored
    progress.report("a", {"n": 0})  # so the same report is stored now
    assert calls == [0, 0]


class RecordingBackend:
    """The task's Celery backend: records (percentage, request id, storing thread) for each PROGRESS store."""

    def __init__(self) -> None:
        self.stores = Stores()

    def store_result(self, task_id: str, meta: Any, state: str, request: Any = None) -> None:
        assert state == "PROGRESS"
        self.stores(task_id, {"n": (meta["progress"]["percentage"], request.id, threading.current_thread().name)})


def recorded_task(name: str, run: Any) -> tuple[Any, Stores]:
    """`run` as a bound `BaseTask` on its own app, its progress coalesced every 0.05 s on a test clock."""
    task: Any = Celery("progress-test", set_as_current=False).task(bind=True, base=BaseTask, name=name)(run)
    backend = task.backend = RecordingBackend()
    task._coalescer = ProgressCoalescer(task._store_progress, interval=0.05, clock=Clock())
    return task, backend.stores


def test_the_task_reports_through_the_coalescer_and_closes_it_when_its_body_ends() -> None:
    """`BaseTask`: the body's first report is stored at once, the next held; when the body ends the held one is
    dropped and a late report stores nothing."""

    def body(self: BaseTask) -> str:
        self.update_progress(10, {"stage": "s"})
        self.update_progress(20, {"stage": "s"})  # held (the test clock stands still)
        return "ok"

    task, stores = recorded_task("recording-progress", body)
    task.push_request(id="t1")
    try:
        task.before_start("t1", (), {})
        assert task() == "ok"
        assert task._coalescer._tasks["t1"].timer is None  # cancelled when the body ended
        task.update_progress(30, {"stage": "late"})
    finally:
        task.pop_request()
    task.update_progress(40, {"stage": "outside a task"})
    assert stores.done == [("t1", (10, "t1", threading.current_thread().name))]


def test_a_held_report_is_stored_by_the_timer_through_the_run_s_own_backend_and_request() -> None:
    """Celery's backend and request are per thread: the timer thread stores through those bound at `before_start`."""

    def body(self: BaseTask) -> None:
        return None

    task, stores = recorded_task("held-progress", body)
    task.push_request(id="t2")
    try:
        task.before_start("t2", (), {})
        task.update_progress(10)
        task.update_progress(20)  # held; the timer stores it
        (_, first), (_, held) = stores.wait_for(2)
    finally:
        task.pop_request()
    me = threading.current_thread().name
    assert first == (10, "t2", me)
    assert held[:2] == (20, "t2") and held[2] != me
