"""The run's wall clock, without the time its test process spent waiting for a CPU.

Why: the wall clock is there for what CPU time cannot see (a sleep, a deadlock, a read from input), and it must
not catch a computation that a loaded machine slowed down. Measured with the plain wall clock at 3× the limit,
near-limit students flipped to TIMEDOUT when the machine's load average reached 8-12 on 2 cores: a process that
gets a sixth of a core takes six times as long. Linux counts, per task, the time it spent runnable but waiting
on a run queue (`/proc/<pid>/schedstat`, second field, `sched_info`): the wall time minus that wait is what the
run would have taken had a CPU been free whenever it wanted one: time computing plus time waiting by its own
doing. That is what the wall limit measures here, for the test process (pid 2 of the run's pid namespace: the
launcher under bwrap, the test process of the warm runner; the launcher itself with isolation none). Other
processes and threads the tests start are not followed: their waits for a CPU still stretch the test process's
own wait for them (documented in docs/work.md, "Limits").
"""

from __future__ import annotations

import contextlib

import psutil

from backends.work.sandbox_uids import processes_of


def _ns_pid(pid: int) -> int | None:
    """The process's pid in its innermost pid namespace (the last value of `NSpid`)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/status", "rb") as handle:
        for line in handle:
            if line.startswith(b"NSpid:"):
                return int(line.split()[-1])
    return None


def test_process(uid: int) -> int | None:
    """The host pid of the run's test process: the process of `uid` that is pid 2 of its namespace."""
    for pid in processes_of(uid):
        if _ns_pid(pid) == 2:
            return pid
    return None


def cpu_wait(pid: int) -> float | None:
    """Seconds `pid` has spent runnable but waiting for a CPU (None when it cannot be read)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/schedstat", "rb") as handle:
        return int(handle.read().split()[1]) / 1e9
    return None


class WallClock:
    """Started at the session's start; `elapsed` is wall time minus the test process's waits for a CPU since."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.started_at: float | None = None
        self.pid: int | None = None
        self.base = 0.0
        self.waited = 0.0

    def start(self, now: float, uid: int | None, pid: int | None) -> None:
        """`pid` when the test process is known (isolation none), else it is found among `uid`'s processes."""
        self.started_at = now
        with contextlib.suppress(psutil.Error):
            self.pid = pid if pid is not None else (test_process(uid) if uid is not None else None)
        waited = cpu_wait(self.pid) if self.pid is not None else None
        self.base = waited if waited is not None else 0.0
        if waited is None:
            self.pid = None  # no counter: the plain wall clock

    def elapsed(self, now: float) -> float:
        if self.started_at is None:
            return 0.0
        if self.pid is not None:
            waited = cpu_wait(self.pid)
            if waited is not None:  # else the process is gone: keep the last reading
                self.waited = max(waited - self.base, 0.0)
        return now - self.started_at - self.waited

    def expired(self, now: float) -> bool:
        return self.started_at is not None and self.elapsed(now) >= self.limit
