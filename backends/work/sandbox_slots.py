"""Admission: a machine runs at most as many sandboxes at once as it has cores for; the rest wait for a slot.

Why: a run's verdict must not depend on how many other runs share the machine. CPU time is load-invariant only
up to a point (caches, hyper-threads), and the generous wall clock only while runs are not queued behind each
other on the cores; so a worker never starts more sandboxes than `sandbox_slots` (default: the CPUs this
process may run on, `os.sched_getaffinity`). A slot is an exclusive `flock` on `<lock dir>/slot-<n>.lock`,
shared by every worker process on the machine (Celery's prefork children, Prefect runners) and released by the
kernel when its holder dies, so there are no stale leases. A run that finds no free slot waits for one; the wait
is not part of its time limit, which starts with its pytest session.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_POLL_SECONDS = 0.05


def slot_count(configured: int) -> int:
    """The number of slots: the configured count, or the CPUs this process may run on."""
    if configured > 0:
        return configured
    return len(os.sched_getaffinity(0)) or 1


def _open(lock_dir: Path, index: int) -> int:
    return os.open(lock_dir / f"slot-{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _prepare(lock_dir: Path) -> None:
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def _try(lock_dir: Path, index: int) -> int | None:
    fd = _open(lock_dir, index)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def run_slot(lock_dir: Path, count: int) -> Iterator[int]:
    """Hold one of `count` slots for the block, waiting (polling every 50 ms) while all are taken."""
    _prepare(lock_dir)
    start = os.getpid() % count  # spread the first try; any free slot is as good as another
    while True:
        for step in range(count):
            index = (start + step) % count
            fd = _try(lock_dir, index)
            if fd is not None:
                try:
                    yield index
                finally:
                    os.close(fd)
                return
        time.sleep(_POLL_SECONDS)


@dataclass(frozen=True)
class SlotUsage:
    """How many sandboxes run on this machine now, and how many may."""

    in_use: int
    total: int


def slot_usage(lock_dir: Path, count: int) -> SlotUsage:
    """Count the held slots (a slot this call can lock for an instant is free)."""
    _prepare(lock_dir)
    used = 0
    for index in range(count):
        fd = _try(lock_dir, index)
        if fd is None:
            used += 1
        else:
            os.close(fd)
    return SlotUsage(used, count)
