"""A long-running student solution without a timer, and the test side that lets it go on.

Each call of `add`/`mul` leaves a `waiting` marker in the run's own work dir (the sandbox's `/work`) and blocks
until the test puts `release` beside it, so a job is certainly RUNNING while a test observes, cancels or kills
it. The sandbox dirs must live under a `SANDBOX_ROOT` the test chose (`sandbox_root()`), outside pytest's own
temp tree (mode 0700 under root), so each run's uid can reach its dir.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SLOW_CALC = """import pathlib
import time


def _until_released():
    here = pathlib.Path.cwd()
    (here / "waiting").touch()
    deadline = time.monotonic() + 300
    while not (here / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the test's release file, with a deadline


def add(a, b):
    _until_released()
    return a + b


def mul(a, b):
    _until_released()
    return a * b


def mean(values):
    return sum(values) / len(values)
"""


@contextmanager
def sandbox_root() -> Iterator[Path]:
    """A `SANDBOX_ROOT` for the workers a test starts, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="gateway-test-sandboxes-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def waiting_markers(root: Path) -> list[Path]:
    """The `waiting` markers of the slow runs under `root` (a run's `/work` is its run dir's `space/work`)."""
    return sorted(root.glob("*/space/work/waiting"))


def release_slow_runs(root: Path) -> int:
    """Let every slow student run waiting under `root` go on; how many were waiting."""
    released = 0
    for marker in waiting_markers(root):
        (marker.parent / "release").touch()
        released += 1
    return released
