"""Admission (`backends.work.sandbox_slots`): never more sandboxes at once than slots; a run waits for one."""

from __future__ import annotations

import threading
from pathlib import Path

from backends.work.sandbox_slots import run_slot, slot_count, slot_usage


def test_the_default_is_the_usable_cpus_and_a_setting_overrides_it() -> None:
    import os

    assert slot_count(0) == len(os.sched_getaffinity(0))
    assert slot_count(3) == 3


def test_held_slots_are_counted_and_a_third_run_waits_for_one(tmp_path: Path) -> None:
    locks = tmp_path / "slots"
    assert slot_usage(locks, 2).in_use == 0
    admitted = threading.Event()
    release_first = threading.Event()
    first_in = threading.Event()
    held: list[int] = []

    def third() -> None:
        with run_slot(locks, 2) as index:
            held.append(index)
            admitted.set()

    def first() -> None:
        with run_slot(locks, 2) as index:
            held.append(index)
            first_in.set()
            release_first.wait(30)

    with run_slot(locks, 2) as mine:
        holder = threading.Thread(target=first)
        holder.start()
        assert first_in.wait(30)  # the holder took the second slot
        waiter = threading.Thread(target=third)
        waiter.start()
        assert slot_usage(locks, 2).in_use == 2
        assert not admitted.is_set()  # both slots are taken: the third run is still waiting
        release_first.set()
        holder.join(30)
        assert admitted.wait(30)
        waiter.join(30)
    other = 1 - mine
    assert held == [other, other]  # the third run got the slot the first one freed
    assert slot_usage(locks, 2).in_use == 0
