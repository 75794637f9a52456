"""A run's own bounded writable space: a size-limited tmpfs holding its `work/` and `out/`.

Why: a run that fills its writable dir must fail only itself. When that dir was a plain directory under the
host's temp dir (with a per-file limit only), a run writing many files filled the host's disk and a concurrent
honest job failed at checkout ("No space left on device"). Each run's `space/` is now a tmpfs of
`sandbox_disk_mb` (and at most one inode per 4 KiB of it), mounted by the worker (root) on the run dir before
the student's files are copied in, `nosuid,nodev`, and detached when the run dir is removed. Filling it gives
the run ENOSPC and nothing else notices. A tmpfs lives in memory: its size counts in the run's memory bound
(docs/work.md, "Memory"). A worker that is not root cannot mount: the run's space is then a plain directory
(per-file limit only), and the host's disk must be guarded otherwise (`SANDBOX_ROOT` on a filesystem of its own);
so is a root worker the kernel does not let mount (a container without CAP_SYS_ADMIN), with a warning in its log.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

_MNT_DETACH = 2
_MS_NOSUID, _MS_NODEV = 2, 4
_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger(__name__)
_warned = False


def can_mount() -> bool:
    """Only root may mount the run's tmpfs here (the worker's own mount namespace)."""
    return os.geteuid() == 0


def mount_space(path: Path, size_bytes: int) -> bool:
    """Mount a tmpfs of `size_bytes` on the (empty, existing) `path`; False when this worker cannot."""
    if size_bytes <= 0 or not can_mount():
        return False
    inodes = max(1024, size_bytes // 4096)
    options = f"size={size_bytes},nr_inodes={inodes},mode=0755".encode()
    flags = ctypes.c_ulong(_MS_NOSUID | _MS_NODEV)
    if _libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", flags, options) != 0:
        errno = ctypes.get_errno()
        if errno in (1, 13):  # EPERM, EACCES: root without CAP_SYS_ADMIN (a container): as for a non-root worker
            global _warned
            if not _warned:
                _warned = True
                log.warning(
                    "runs get no tmpfs of their own here (%s): their space is the host's disk", os.strerror(errno)
                )
            return False
        raise OSError(errno, f"mount a tmpfs on {path}: {os.strerror(errno)}")
    return True


def release_space(path: Path) -> None:
    """Detach the run's tmpfs (its memory is freed once nothing holds a file in it)."""
    if _libc.umount2(str(path).encode(), _MNT_DETACH) != 0:
        errno = ctypes.get_errno()
        if errno not in (22, 2):  # EINVAL: not a mount point (never mounted); ENOENT: gone
            raise OSError(errno, f"unmount {path}: {os.strerror(errno)}")


def space_full(path: Path) -> bool:
    """True when the run used (nearly) all of its space: less than one 4 KiB block free, or no inode."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 4096 or (stat.f_files > 0 and stat.f_favail == 0)
