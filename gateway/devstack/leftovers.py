"""Children a killed `gateway up` left running: recorded by pid and start time, stopped by the next start."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import psutil

from gateway.devstack.supervisor import Supervisor

CHILDREN_FILE = "up-children.json"


def _start_time(pid: int) -> float | None:
    """The process's start time (psutil's `create_time`): tells a pid from a later process that reuses it."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def record_children(data_dir: Path, supervisor: Supervisor) -> None:
    """Write who runs (pid + start time), so a later `gateway up` can stop what a killed one left behind."""
    entries = [
        {"name": s.spec.name, "pid": s.process.pid, "start": _start_time(s.process.pid)} for s in supervisor.services
    ]
    tmp = data_dir / f"{CHILDREN_FILE}.tmp"
    tmp.write_text(json.dumps(entries))
    tmp.replace(data_dir / CHILDREN_FILE)


def stop_leftovers(data_dir: Path, grace: float = 10.0) -> list[str]:
    """Stop the process groups an earlier `gateway up` recorded and that still run (it was SIGKILLed).

    Only a process with the recorded pid *and* start time is touched, so a reused pid is never signalled.
    """
    path = data_dir / CHILDREN_FILE
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    alive = [e for e in entries if e.get("start") and _start_time(int(e["pid"])) == e["start"]]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for entry in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(entry["pid"]), sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_start_time(int(e["pid"])) == e["start"] for e in alive):
            time.sleep(0.1)  # polling for the processes to exit, with a deadline
    path.unlink(missing_ok=True)
    return [f"{e['name']} (pid {e['pid']})" for e in alive]
