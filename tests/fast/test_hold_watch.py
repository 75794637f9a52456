"""The hold check's rules (backends/celery/liveness.py), on a fake clock and fake answers: which legs are lost,
after how long, which cannot be judged, and which wait behind a busy but live worker. The real faults are in
tests/faults/test_broker_faults.py, the real busy worker in tests/celery/test_busy_worker.py."""

from __future__ import annotations

from typing import Any

from backends.celery.adapter import CeleryAdapter
from backends.celery.liveness import Candidate, Holding, HoldVerdicts, HoldWatch
from backends.interface import LegPhase, LegState
from backends.prefect.serve import serve_until_stopped


class Fakes:
    def __init__(self) -> None:
        self.now = 0.0
        self.replies: dict[str, dict[str, Any]] = {"w1@h": {}}
        self.queued: dict[str, str] | None = {}
        self.known = 1
        self.consumers: dict[str, set[str]] = {"w1@h": {"high_priority"}}
        self.asked_queues = 0

    def active_queues(self) -> dict[str, set[str]]:
        self.asked_queues += 1
        return {name: queues for name, queues in self.consumers.items() if name in self.replies}

    def watch(self) -> HoldWatch:
        return HoldWatch(
            ask_workers=lambda ids: {
                name: {i: v for i, v in answer.items() if i in ids} for name, answer in self.replies.items()
            },
            queued_ids=lambda: self.queued,
            known_workers=lambda: self.known,
            active_queues=self.active_queues,
            lost_after=5.0,
            interval=1.0,
            clock=lambda: self.now,
            start=lambda check: check(),
        )


RUNNING = {"a": Candidate(Holding.RUNNING, "w1@h")}
WAITING = {"q": Candidate(Holding.WAITING)}


def seen_until(fakes: Fakes, watch: HoldWatch, candidates: dict[str, Candidate], seconds: float) -> HoldVerdicts:
    seen = HoldVerdicts()
    while fakes.now <= seconds:
        seen = watch.observe(candidates, candidates)
        fakes.now += 1.0
    return seen


def observe_until(fakes: Fakes, watch: HoldWatch, candidates: dict[str, Candidate], seconds: float) -> dict[str, str]:
    return seen_until(fakes, watch, candidates, seconds).lost


def test_a_running_leg_its_answering_worker_does_not_hold_is_lost_after_the_window() -> None:
    fakes = Fakes()
    watch = fakes.watch()
    assert observe_until(fakes, watch, RUNNING, 4.0) == {}  # not yet: the window is 5 s
    lost = observe_until(fakes, watch, RUNNING, 7.0)
    assert "answers but has not held" in lost["a"]


def test_a_held_leg_is_never_lost_and_holding_again_resets_the_window() -> None:
    fakes = Fakes()
    watch = fakes.watch()
    fakes.replies["w1@h"] = {"a": ["active", {}]}
    assert observe_until(fakes, watch, RUNNING, 20.0) == {}
    fakes.replies["w1@h"] = {}
    assert observe_until(fakes, watch, RUNNING, 24.0) == {}  # 4 s unheld only


def test_a_running_leg_of_a_silent_worker_is_left_to_the_ping() -> None:
    fakes = Fakes()
    fakes.replies = {"other@h": {}}
    assert observe_until(fakes, fakes.watch(), RUNNING, 20.0) == {}


def test_a_waiting_leg_no_queue_and_no_worker_holds_is_lost() -> None:
    fakes = Fakes()
    lost = observe_until(fakes, fakes.watch(), WAITING, 8.0)
    assert "neither queued at the broker nor held" in lost["q"]


def test_a_queued_or_reserved_leg_is_held() -> None:
    fakes = Fakes()
    fakes.queued = {"q": "high_priority"}
    assert observe_until(fakes, fakes.watch(), WAITING, 20.0) == {}
    fakes = Fakes()
    fakes.replies["w1@h"] = {"q": ["reserved", {}]}
    assert observe_until(fakes, fakes.watch(), WAITING, 20.0) == {}


def test_a_waiting_leg_is_not_judged_when_a_known_worker_is_silent_or_the_broker_cannot_list() -> None:
    fakes = Fakes()
    fakes.known = 2  # one of two known workers did not answer: it may hold the message
    assert observe_until(fakes, fakes.watch(), WAITING, 20.0) == {}
    fakes = Fakes()
    fakes.queued = None  # AMQP: no queue listing
    assert observe_until(fakes, fakes.watch(), WAITING, 20.0) == {}
    fakes = Fakes()
    fakes.replies = {}  # no worker answered at all
    assert observe_until(fakes, fakes.watch(), WAITING, 20.0) == {}


def test_a_rerun_forgets_what_was_seen_of_the_failed_attempt() -> None:
    fakes = Fakes()
    watch = fakes.watch()
    observe_until(fakes, watch, RUNNING, 7.0)
    watch.forget("a")
    assert watch.observe(RUNNING, RUNNING) == HoldVerdicts()


# --------------------------------------------------------------------------------- busy is not dead (issue 27 §4)
def test_a_leg_queued_where_a_live_worker_consumes_is_busy_until_it_runs() -> None:
    fakes = Fakes()
    fakes.queued = {"q": "high_priority"}
    watch = fakes.watch()
    seen = seen_until(fakes, watch, WAITING, 20.0)
    assert seen.lost == {} and "queued in high_priority behind busy live workers consuming it (w1@h)" in seen.busy["q"]
    # Its worker took it: it runs, its time is the student's, not the queue's.
    assert watch.observe(WAITING, {}) == HoldVerdicts()
    assert watch.observe(WAITING, WAITING).busy == {}


def test_a_leg_reserved_by_a_live_worker_is_busy() -> None:
    fakes = Fakes()
    fakes.replies["w1@h"] = {"q": ["reserved", {}]}
    seen = seen_until(fakes, fakes.watch(), WAITING, 20.0)
    assert seen.lost == {} and "reserved by the live worker w1@h" in seen.busy["q"]
    assert fakes.asked_queues == 0  # nothing queued: no active_queues broadcast


def test_a_queued_leg_no_live_worker_consumes_is_not_busy() -> None:
    # Misconfigured: the live worker consumes another queue only.
    fakes = Fakes()
    fakes.queued = {"q": "high_priority"}
    fakes.consumers = {"w1@h": {"default"}}
    assert seen_until(fakes, fakes.watch(), WAITING, 20.0) == HoldVerdicts()
    # Dead: no worker answers at all.
    fakes = Fakes()
    fakes.queued = {"q": "high_priority"}
    fakes.replies = {}
    assert seen_until(fakes, fakes.watch(), WAITING, 20.0) == HoldVerdicts()


def test_busy_ends_when_the_consuming_worker_stops_answering() -> None:
    fakes = Fakes()
    fakes.queued = {"q": "high_priority"}
    watch = fakes.watch()
    assert seen_until(fakes, watch, WAITING, 5.0).busy
    fakes.replies = {}
    assert seen_until(fakes, watch, WAITING, 10.0).busy == {}


def test_a_running_leg_or_a_broker_that_cannot_list_is_never_busy() -> None:
    fakes = Fakes()
    fakes.replies["w1@h"] = {"a": ["active", {}]}
    assert seen_until(fakes, fakes.watch(), RUNNING, 20.0).busy == {}
    fakes = Fakes()
    fakes.queued = None  # AMQP
    assert seen_until(fakes, fakes.watch(), WAITING, 20.0).busy == {}


def test_active_queues_is_asked_at_most_once_per_interval() -> None:
    fakes = Fakes()
    fakes.queued = {"q": "high_priority"}
    watch = fakes.watch()
    for _ in range(5):  # five polls within one interval
        watch.observe(WAITING, WAITING)
    assert fakes.asked_queues == 1


def test_a_check_that_fails_keeps_what_the_last_one_saw_for_a_while() -> None:
    fakes = Fakes()
    fakes.queued = {"q": "high_priority"}
    watch = fakes.watch()
    assert seen_until(fakes, watch, WAITING, 2.0).busy

    def unreachable() -> dict[str, str]:
        raise ConnectionError("broker gone")

    watch.queued_ids = unreachable
    assert seen_until(fakes, watch, WAITING, 5.0).busy
    # Old news lapses: five intervals after the last check that saw it busy, it is not reported any more.
    assert seen_until(fakes, watch, WAITING, 9.0).busy == {}


def test_the_adapter_marks_busy_waiting_legs_not_running_ones(tmp_path: Any) -> None:
    """`CeleryAdapter._mark_lost` copies the watch's verdicts onto the polled states (a Redis broker URL, the
    broadcasts stubbed)."""
    from common.settings import Settings

    adapter = CeleryAdapter(Settings(celery_broker_url="redis://127.0.0.1:1/0", gateway_data_dir=tmp_path))
    fakes = Fakes()
    fakes.queued = {"q": "high_priority"}
    adapter._hold_watch = fakes.watch()
    waiting = {"q": LegState(leg_id="q", phase=LegPhase.MISSING, native="PENDING")}
    for _ in range(3):
        adapter._mark_lost(waiting)
        fakes.now += 1.0
    assert waiting["q"].busy and "high_priority" in waiting["q"].busy and waiting["q"].lost is None
    running = {"q": LegState(leg_id="q", phase=LegPhase.RUNNING, native="STARTED")}
    adapter._mark_lost(running)
    assert running["q"].busy is None


def test_the_prefect_runner_is_served_again_after_it_fails_and_ends_on_a_clean_stop() -> None:
    calls: list[str] = []
    slept: list[float] = []

    def serve_once() -> None:
        calls.append("serve")
        if len(calls) < 3:
            raise RuntimeError("Service exceeded error threshold.")

    serve_until_stopped(serve_once, sleep=slept.append)
    assert calls == ["serve"] * 3 and slept == [1.0, 2.0]
