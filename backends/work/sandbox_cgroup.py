"""A run's total memory, bounded by the kernel: a memory cgroup of its own per run.

Why: RLIMIT_AS bounds one process and RLIMIT_NPROC the number of them, so a run could hold their product (1 GiB
× 256); the worker's polling (`sandbox_memory`) only looks every 0.1 s, so a run may pass its budget between two
looks. A memory cgroup is charged on every page a process of the run touches (its heap, its tmpfs files, its
kernel objects) and cannot hold more than its limit: past it the kernel reclaims or kills a process of that
group, never one of another run.

Where: each run gets `gateway-run-<worker pid>-<n>` under the cgroup root: `SANDBOX_CGROUP_ROOT`, or else the
worker's own memory cgroup (so the runs stay inside whatever bounds the worker). Which kind:
- cgroup v2 (`memory.max`, `memory.swap.max` 0, `memory.oom.group` 1 so an OOM kill ends the whole run, and
  `pids.max`) when the root is a v2 cgroup whose `cgroup.controllers` offers `memory` and whose
  `cgroup.subtree_control` has it or accepts `+memory` (a v2 cgroup holding processes of its own refuses that:
  point `SANDBOX_CGROUP_ROOT` at a delegated cgroup without processes, docs/operations.md);
- cgroup v1 (`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` where swap is accounted, and `pids.max` in
  the v1 pids hierarchy when it is mounted) when the root is a v1 memory cgroup;
- otherwise none: the worker keeps the polled bound (`MemoryBound.WATCH`), and says which in `gateway worker
  status`. Each root is tried once per worker process: a child is made, limited and removed.

The run's first process is placed in its group before it runs anything of the student's (the cold runner waits
at a gate until the worker has written its pid into `cgroup.procs`; the warm runner's keeper writes its own pid
before it forks the run), so every process of the run is born in it. An OOM kill in the group after the run's
charge reached its own limit is the run passing its memory limit; the verdict says so (CRASHED, "memory limit of
the run (N MiB) exceeded"). An OOM kill in the group that never reached its limit came from above (the worker's
cgroup or the whole machine out of memory): an infrastructure error (re-run), never a grade.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from backends.work.errors import InfrastructureError
from backends.work.sandbox_uids import kill_until_gone

log = logging.getLogger(__name__)
_PREFIX = "gateway-run-"
_RUNNER_TASKS = 8  # pids.max above RLIMIT_NPROC: the runner's own tasks (bwrap's, the warm keeper) count there too
_counter = itertools.count()


class MemoryBound(enum.StrEnum):
    """What holds a run's total memory on this worker."""

    CGROUP_V2 = "cgroup-v2"  # the kernel: memory.max of the run's own cgroup
    CGROUP_V1 = "cgroup-v1"  # the kernel: memory.limit_in_bytes of the run's own cgroup
    WATCH = "watch"  # the worker's polling of the run's processes (`sandbox_memory`): may overshoot between looks


@dataclass(frozen=True)
class CgroupPlace:
    """Where runs' cgroups are made on this worker, and why this bound is the one in force."""

    bound: MemoryBound
    memory: Path | None = None  # the parent dir of the runs' memory cgroups (v2: of their only cgroup)
    pids: Path | None = None  # v1 only: the parent dir of the runs' pids cgroups, when that hierarchy is mounted
    reason: str = ""

    def describe(self) -> str:
        """One line for `gateway worker status` and the log."""
        if self.bound is MemoryBound.WATCH:
            return f"watch (polled every 0.1 s, may overshoot): {self.reason}"
        return f"{self.bound.value} (hard, kernel-enforced) under {self.memory}"


# ------------------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class _Mount:
    root: str  # the part of the hierarchy mounted here
    point: str
    fstype: str
    options: frozenset[str]


def _mounts() -> list[_Mount]:
    """cgroup and cgroup2 mounts from `/proc/self/mountinfo` (fields: id parent dev root point opts ... - fs src
    super-opts)."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            point = fields[4].replace("\\040", " ")
            found.append(_Mount(fields[3], point, tail[0], frozenset(tail[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup per controller (`/proc/self/cgroup`); the v2 one under the key ""."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _dir(mount: _Mount, path: str) -> Path:
    rel = path[len(mount.root) :] if mount.root != "/" and path.startswith(mount.root) else path
    return Path(mount.point) / rel.lstrip("/")


def _own_dir(fstype: str, controller: str) -> Path | None:
    """This worker's own cgroup dir in the hierarchy of `controller` ("" = the v2 hierarchy)."""
    with contextlib.suppress(OSError, ValueError):
        paths = _own_paths()
        for mount in _mounts():
            if mount.fstype != fstype or (controller and controller not in mount.options):
                continue
            if controller in paths:
                return _dir(mount, paths[controller])
    return None


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)


def _v2_ready(root: Path) -> str | None:
    """None when runs' v2 cgroups under `root` get a memory controller, else why not."""
    if "memory" not in _read(root / "cgroup.controllers").split():
        return f"{root}: the cgroup v2 hierarchy offers no memory controller here"
    wanted = [c for c in ("memory", "pids") if c in _read(root / "cgroup.controllers").split()]
    enabled = _read(root / "cgroup.subtree_control").split()
    for controller in wanted:
        if controller not in enabled:
            try:
                _write(root / "cgroup.subtree_control", f"+{controller}")
            except OSError as exc:
                if controller == "memory":
                    return f"{root}: cannot enable the memory controller for child cgroups ({exc.strerror or exc})"
    return None


def _probe(place: CgroupPlace) -> str | None:
    """Make, limit and remove one child group: None when that works, else why not."""
    group = RunGroup(place, 64 << 20, 64)
    try:
        group.create()
    except OSError as exc:
        return f"a run's cgroup cannot be made under {place.memory}: {exc.strerror or exc}"
    finally:
        group.remove()
    return None


def _place_for(root: Path, pids: Path | None) -> CgroupPlace:
    if (root / "cgroup.controllers").is_file():
        try:
            why_not = _v2_ready(root)
        except OSError as exc:
            why_not = f"{root}: {exc.strerror or exc}"
        if why_not is not None:
            return CgroupPlace(MemoryBound.WATCH, reason=why_not)
        place = CgroupPlace(MemoryBound.CGROUP_V2, root)
    elif (root / "memory.limit_in_bytes").is_file():
        place = CgroupPlace(MemoryBound.CGROUP_V1, root, pids if pids and (pids / "cgroup.procs").is_file() else None)
    else:
        return CgroupPlace(MemoryBound.WATCH, reason=f"{root} is not a memory cgroup")
    why_not = _probe(place)
    if why_not is not None and place.pids is not None:  # the pids hierarchy is a nicety, memory is the bound
        place = CgroupPlace(place.bound, place.memory)
        why_not = _probe(place)
    return place if why_not is None else CgroupPlace(MemoryBound.WATCH, reason=why_not)


def _remove_stale(place: CgroupPlace) -> None:
    """Remove the (empty) groups a worker that died mid-run left behind; a live worker's groups are not touched."""
    for parent in (place.memory, place.pids):
        if parent is None:
            continue
        for path in parent.glob(f"{_PREFIX}*"):
            owner = path.name[len(_PREFIX) :].split("-")[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                with contextlib.suppress(OSError):
                    path.rmdir()


@lru_cache(maxsize=8)
def cgroup_place(configured: str | None) -> CgroupPlace:
    """The bound in force for runs of this worker process: `configured` (`SANDBOX_CGROUP_ROOT`) or the worker's
    own cgroup (v2 first, then the v1 memory hierarchy). Found once per process and root."""
    place = _find_place(configured)
    if place.bound is not MemoryBound.WATCH:
        _remove_stale(place)
    return place


def _find_place(configured: str | None) -> CgroupPlace:
    if os.geteuid() != 0:
        return CgroupPlace(MemoryBound.WATCH, reason="the worker is not root: it cannot make cgroups")
    pids = _own_dir("cgroup", "pids")
    if configured:
        return _place_for(Path(configured), pids)
    v2 = _own_dir("cgroup2", "")
    reasons = []
    if v2 is not None:
        place = _place_for(v2, None)
        if place.bound is not MemoryBound.WATCH:
            return place
        reasons.append(place.reason)
    v1 = _own_dir("cgroup", "memory")
    if v1 is not None:
        place = _place_for(v1, pids)
        if place.bound is not MemoryBound.WATCH:
            return place
        reasons.append(place.reason)
    return CgroupPlace(MemoryBound.WATCH, reason="; ".join(reasons) or "no cgroup hierarchy is mounted")


# ------------------------------------------------------------------------------------------------- one run
def _int_field(path: Path, name: str) -> int:
    """`name N` from a flat keyed file (memory.events, memory.oom_control); 0 when absent."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    return 0


@dataclass
class RunGroup:
    """One run's cgroup(s): made before the run starts, removed (every process in it killed) after."""

    place: CgroupPlace
    budget: int  # bytes
    max_processes: int
    dirs: list[Path] = field(default_factory=list)

    @property
    def memory_dir(self) -> Path:
        return self.dirs[0]

    def create(self) -> None:
        name = f"{_PREFIX}{os.getpid()}-{next(_counter)}"
        assert self.place.memory is not None
        parents = [self.place.memory] + ([self.place.pids] if self.place.pids is not None else [])
        for parent in parents:
            path = parent / name
            path.mkdir()
            self.dirs.append(path)
        memory = self.memory_dir
        if self.place.bound is MemoryBound.CGROUP_V2:
            _write(memory / "memory.max", str(self.budget))
            for knob, value in (("memory.swap.max", "0"), ("memory.oom.group", "1"),
                                ("pids.max", str(self.max_processes + _RUNNER_TASKS))):  # fmt: skip
                if (memory / knob).exists():
                    _write(memory / knob, value)
            return
        _write(memory / "memory.limit_in_bytes", str(self.budget))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # memory + swap: no way around the limit by swap
            _write(memory / "memory.memsw.limit_in_bytes", str(self.budget))
        if len(self.dirs) > 1:
            _write(self.dirs[1] / "pids.max", str(self.max_processes + _RUNNER_TASKS))

    def procs_files(self) -> list[str]:
        """Where a process's pid is written to place it (and all it will start) in this run's groups."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def place_pid(self, pid: int) -> None:
        for procs in self.procs_files():
            _write(Path(procs), str(pid))

    def oom_killed(self) -> bool:
        """The kernel killed a process of this run because the run reached its memory limit."""
        if not self.dirs:
            return False
        if self.place.bound is MemoryBound.CGROUP_V2:
            return _int_field(self.memory_dir / "memory.events", "oom_kill") > 0
        control = self.memory_dir / "memory.oom_control"
        return _int_field(control, "oom_kill") > 0 or _int_field(control, "under_oom") > 0

    def limit_hit(self) -> bool:
        """The run's charge reached its own limit at least once: its peak is the limit, or a charge failed on it
        (v1 `memory.failcnt` or, with swap accounted, `memory.memsw.failcnt`, which counts the failure instead
        when both limits are equal; v2 `memory.events` `max`).

        An OOM kill without it was not this run's limit: the worker's cgroup or the machine ran out of memory
        (several runs' budgets together above what the worker has), and the kill says nothing of the student."""
        if not self.dirs:
            return False
        if self.peak() >= self.budget:
            return True
        if self.place.bound is MemoryBound.CGROUP_V2:
            return _int_field(self.memory_dir / "memory.events", "max") > 0
        for name in ("memory.failcnt", "memory.memsw.failcnt"):
            with contextlib.suppress(OSError, ValueError):
                if int(_read(self.memory_dir / name)) > 0:
                    return True
        return False

    def peak(self) -> int:
        """The most the run held at once (bytes): `memory.peak` (v2, Linux 5.19+) / `memory.max_usage_in_bytes`."""
        if not self.dirs:
            return 0
        name = "memory.peak" if self.place.bound is MemoryBound.CGROUP_V2 else "memory.max_usage_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            return int(_read(self.memory_dir / name))
        return 0

    def _pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs_files():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(v) for v in Path(procs).read_text(encoding="ascii").split())
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL every process of the run until none is left (a fork keeps forking between two rounds)."""
        if not self.dirs:
            return
        if (self.memory_dir / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.memory_dir / "cgroup.kill", "1")
        kill_until_gone(self._pids)

    def remove(self) -> None:
        """Kill what is left, then remove the groups. A group whose last tasks are still exiting refuses rmdir
        for a moment (longer on a loaded machine): retried for up to 10 s, killing again; a group still there
        then is left to the next worker process's clean-up of dead workers' groups, and logged."""
        self.kill()
        for path in reversed(self.dirs):
            for attempt in range(1000):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if attempt == 999:
                        log.warning("a run's cgroup could not be removed (left for later): %s: %s", path, exc)
                        break
                    if attempt % 100 == 99:
                        self.kill()
                    time.sleep(0.01)
        self.dirs.clear()


@contextlib.contextmanager
def run_group(place: CgroupPlace, budget: int, max_processes: int) -> Iterator[RunGroup | None]:
    """The run's cgroup for the block (None when the polled bound is the one in force, or no budget is set)."""
    if place.bound is MemoryBound.WATCH or budget <= 0:
        yield None
        return
    group = RunGroup(place, budget, max_processes)
    try:
        group.create()
    except OSError as exc:
        group.remove()
        raise InfrastructureError(f"the run's cgroup could not be made: {exc.strerror or exc}") from None
    try:
        yield group
    finally:
        group.remove()
