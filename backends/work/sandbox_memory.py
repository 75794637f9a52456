"""A run's total memory: what all of its processes hold together, watched by the worker (the fallback bound).

Why not only rlimits: RLIMIT_AS bounds one process (`sandbox_memory_mb`), RLIMIT_NPROC the number of tasks of
the run's uid (`sandbox_max_processes`), so a run could hold their product (1 GiB × 256 before). The hard bound is
a memory cgroup per run (`sandbox_cgroup`); this watch is what holds the run where the worker cannot make one
(not root, a container without a delegated memory cgroup, `SANDBOX_CGROUP_ROOT` not a memory cgroup), so the
bound is kept by accounting there. The worker sums the proportional set size (`Pss` from
`/proc/<pid>/smaps_rollup`: shared pages split between the processes that map them, so a forked pool is not
counted N times) of every process of the run's uid every `_EVERY` seconds, and ends the run when the sum
passes `sandbox_run_memory_mb`; the verdict says so (CRASHED, "memory limit"). Between two looks a run may
grow by what its processes can allocate in that time, and never past RLIMIT_AS × RLIMIT_NPROC (docs/work.md,
"Memory"). The run's tmpfs (`sandbox_space`) is bounded on its own by its size.
"""

from __future__ import annotations

import psutil

from backends.work.sandbox_uids import processes_of

_EVERY = 0.1  # seconds between two looks


def _pss(pid: int) -> int:
    """psutil reads `/proc/<pid>/smaps_rollup` where the kernel has it (one line per field, cheap)."""
    try:
        return int(psutil.Process(pid).memory_full_info().pss)
    except psutil.Error:
        return 0  # gone meanwhile


def run_memory(uid: int) -> int:
    """Bytes held by the processes of `uid` (proportional set size, summed)."""
    return sum(_pss(pid) for pid in processes_of(uid))


class MemoryWatch:
    """Looks at a run's memory at most every `_EVERY` seconds; remembers the peak it saw."""

    def __init__(self, uid: int | None, budget_bytes: int) -> None:
        self.uid = uid
        self.budget = budget_bytes
        self.peak = 0
        self.exceeded = False
        self._next = 0.0

    def check(self, now: float) -> bool:
        """True when the run holds more than its budget (then `exceeded` stays set)."""
        if self.uid is None or self.budget <= 0 or now < self._next:
            return self.exceeded
        self._next = now + _EVERY
        held = run_memory(self.uid)
        self.peak = max(self.peak, held)
        if held > self.budget:
            self.exceeded = True
        return self.exceeded
