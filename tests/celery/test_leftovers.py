"""A dead run's checkout and sandbox directories are removed by the sweep; a live run's are never touched."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from backends.celery.leftovers import sweep
from backends.work.sandbox_space import mount_space, release_space
from tests.support.celery_worker import settings_from_env


def test_the_sweep_removes_only_work_directories_older_than_any_run(tmp_path: Path) -> None:
    settings = settings_from_env({"GATEWAY_DATA_DIR": str(tmp_path / "data"), "TASK_TIME_LIMIT": "100"})
    old = time.time() - 100 - 61  # older than the hard time limit plus the margin: no live run can own it
    dead = [tmp_path / "gateway-sandbox-dead1", tmp_path / "gateway-checkout-dead2"]
    live = tmp_path / "gateway-sandbox-live"
    other = tmp_path / "someone-elses-dir"
    for path in (*dead, live, other):
        (path / "inside").mkdir(parents=True)
        (path / "inside" / "file.py").write_text("x")
    for path in (*dead, other):
        os.utime(path, (old, old))  # made long ago (setting up time, not faking the sweep)
    removed = sweep(settings, bases=[tmp_path])
    assert sorted(removed) == sorted(dead)
    assert not any(p.exists() for p in dead) and live.exists() and other.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="a run's tmpfs is mounted by a root worker")
def test_the_sweep_detaches_a_dead_runs_tmpfs(tmp_path: Path) -> None:
    """A worker killed mid-run leaves its run's tmpfs (`sandbox_space`) mounted: the sweep detaches it."""
    settings = settings_from_env({"GATEWAY_DATA_DIR": str(tmp_path / "data"), "TASK_TIME_LIMIT": "100"})
    dead = tmp_path / "gateway-sandbox-dead"
    (dead / "space").mkdir(parents=True)
    assert mount_space(dead / "space", 1 << 20)
    (dead / "space" / "work").mkdir()
    old = time.time() - 100 - 61
    os.utime(dead, (old, old))
    try:
        assert sweep(settings, bases=[tmp_path]) == [dead]
        assert not dead.exists()
        assert str(dead / "space") not in Path("/proc/self/mounts").read_text()
    finally:
        with contextlib.suppress(OSError):
            release_space(dead / "space")
