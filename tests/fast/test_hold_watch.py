"""The hold check's rules (backends/celery/liveness.py), on a fake clock and fake answers: which legs are lost,
after how long, and which cannot be judged. The real faults are in tests/faults/test_broker_faults.py."""

from __future__ import annotations

from typing import Any

from backends.celery.liveness import Candidate, Holding, HoldWatch
from backends.prefect.serve import serve_until_stopped


class Fakes:
    def __init__(self) -> None:
        self.now = 0.0
        self.replies: dict[str, dict[str, Any]] = {"w1@h": {}}
        self.queued: set[str] | None = set()
        self.known = 1

    def watch(self) -> HoldWatch:
        return HoldWatch(
            ask_workers=lambda ids: {
                name: {i: v for i, v in answer.items() if i in ids} for name, answer in self.replies.items()
            },
            queued_ids=lambda: self.queued,
            known_workers=lambda: self.known,
            lost_after=5.0,
            interval=1.0,
            clock=lambda: self.now,
            start=lambda check: check(),
        )


RUNNING = {"a": Candidate(Holding.RUNNING, "w1@h")}
WAITING = {"q": Candidate(Holding.WAITING)}


def observe_until(fakes: Fakes, watch: HoldWatch, candidates: dict[str, Candidate], seconds: float) -> dict[str, str]:
    lost: dict[str, str] = {}
    while fakes.now <= seconds:
        lost = watch.observe(candidates, candidates)
        fakes.now += 1.0
    return lost


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
    fakes.queued = {"q"}
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
    assert watch.observe(RUNNING, RUNNING) == {}


def test_the_prefect_runner_is_served_again_after_it_fails_and_ends_on_a_clean_stop() -> None:
    calls: list[str] = []
    slept: list[float] = []

    def serve_once() -> None:
        calls.append("serve")
        if len(calls) < 3:
            raise RuntimeError("Service exceeded error threshold.")

    serve_until_stopped(serve_once, sleep=slept.append)
    assert calls == ["serve"] * 3 and slept == [1.0, 2.0]
