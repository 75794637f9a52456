"""Stopping and supervising: signals turned into a clean stop, one `gateway up` per data folder, restarts."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rich.console import Console

from gateway.devstack.errors import UpError
from gateway.devstack.leftovers import record_children
from gateway.devstack.supervisor import Supervisor


class StopRequested(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """SIGINT/SIGTERM/SIGHUP arrived: leave the main loop and stop every child.

    A BaseException, like KeyboardInterrupt, so a health probe's `except Exception` cannot swallow it; the
    loops also check `STOP` in case some library code swallowed it anyway.
    """


STOP = threading.Event()


def raise_stop(signum: int, _frame: object) -> None:
    STOP.set()
    raise StopRequested(signal.Signals(signum).name)


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[IO[str]]:
    """One `gateway up` per data folder: two would share a broker folder and a Prefect database."""
    path = data_dir / "up.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise UpError(f"another `gateway up` (pid {owner}) is running on the data folder {data_dir}") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield handle
    finally:
        handle.close()


def supervise(supervisor: Supervisor, console: Console, data_dir: Path) -> None:
    """The main loop: restart what crashed, until a signal (or a service that keeps crashing) ends it."""
    while not STOP.is_set():
        for name in supervisor.check_and_restart():
            record_children(data_dir, supervisor)
            console.print(f"[yellow]{name} exited and was restarted[/yellow]")
        time.sleep(1.0)  # supervision interval
