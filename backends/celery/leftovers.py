"""What a dead run left on disk: its checkout and sandbox directories, removed by the next worker on the host.

A run cleans its own directories when it ends; a worker SIGKILLed mid-run (or a host that lost power) leaves
them behind. Nothing records which process owns a directory, but no run outlives the hard time limit (the pool
child is killed then, and the sandbox dies with its owner), so a directory older than that belongs to no live
run. The sweep runs when a worker starts and then at most once a minute as tasks start, so leftovers of a dead
run are gone at most `task_time_limit` + about a minute after that run began, while any worker runs on the host.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

from backends.work.sandbox_space import release_space
from common.settings import Settings

log = logging.getLogger(__name__)

# The prefixes of the work's temporary directories (backends/work: checkout, sandbox, submission, git home).
PREFIXES = ("gateway-checkout-", "gateway-sandbox-", "gateway-submission-", "gateway-git-")
SWEEP_EVERY = 60.0
_last_sweep = 0.0
_lock = threading.Lock()


def base_dirs(settings: Settings) -> list[Path]:
    dirs = {Path(tempfile.gettempdir())}
    if settings.sandbox_root is not None:
        dirs.add(settings.sandbox_root.expanduser())
    return sorted(dirs)


def sweep(settings: Settings, bases: list[Path] | None = None) -> list[Path]:
    """Remove work directories older than the hard time limit (plus a minute); returns what was removed."""
    cutoff = time.time() - settings.task_time_limit - 60
    removed = []
    for base in bases if bases is not None else base_dirs(settings):
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for path in entries:
            if not path.name.startswith(PREFIXES):
                continue
            try:
                if not path.is_dir() or path.is_symlink() or path.stat().st_mtime > cutoff:
                    continue
            except OSError:
                continue
            with contextlib.suppress(OSError):
                release_space(path / "space")  # a dead run's tmpfs (`sandbox_space`) is detached first
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.warning("removed %d work directories left by dead runs: %s", len(removed), [p.name for p in removed])
    return removed


def sweep_now_and_then(settings: Settings) -> None:
    """`sweep` at most once per SWEEP_EVERY seconds in this process (cheap to call on every task start)."""
    global _last_sweep
    now = time.monotonic()
    with _lock:
        if now - _last_sweep < SWEEP_EVERY:
            return
        _last_sweep = now
    try:
        sweep(settings)
    except Exception:  # noqa: BLE001 - housekeeping must never fail a job
        log.warning("sweeping leftover work directories failed", exc_info=True)
