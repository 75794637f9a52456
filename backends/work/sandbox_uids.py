"""A uid of its own for every run, so runs cannot signal, read or out-fork each other.

When the worker is root, each run takes a free uid from `[sandbox_uid_base, + sandbox_uid_count)`: "free" means
this process holds an exclusive `flock` on `<lock dir>/<uid>.lock` (a root-only dir), so concurrent runs of any
worker on the machine never share one, and a lock dies with the process that held it (no stale leases). On
release, every process still running under that uid is killed first, so the next run starts with none.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psutil

from backends.work.errors import InfrastructureError


def processes_of(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is `uid`.

    Only the uid is read of every process; the status (a second read) only of the few that match."""
    found = []
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is None or uids.real != uid:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
    return found


def kill_until_gone(pids_of: Callable[[], Iterable[int]]) -> bool:
    """SIGKILL what `pids_of()` names until it names nothing (a fork bomb keeps forking between two rounds);
    False when something was still there after 500 rounds."""
    for _ in range(500):
        pids = list(pids_of())
        if not pids:
            return True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    return False


def kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` until none is left."""
    if not kill_until_gone(lambda: processes_of(uid)):
        raise InfrastructureError(f"processes of sandbox uid {uid} could not be killed")


@contextlib.contextmanager
def run_uid(base: int, count: int, lock_dir: Path) -> Iterator[int]:
    """Hold a uid for one run; every process of it is gone when the block ends."""
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(lock_dir, 0o700)
    start = random.randrange(count)  # noqa: S311 - spreading, not secrecy
    for step in range(count):
        uid = base + (start + step) % count
        handle = open(lock_dir / f"{uid}.lock", "a+b")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            kill_uid(uid)  # a worker that died mid-run may have left one behind
            yield uid
        finally:
            try:
                kill_uid(uid)
            finally:
                handle.close()
        return
    raise InfrastructureError(f"no free sandbox uid in [{base}, {base + count})")
