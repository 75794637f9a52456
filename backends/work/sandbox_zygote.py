"""The warm runner (copied into the runtime dir; imports only the standard library, pytest and the verdict plugin).

One per worker process, started as root: it imports pytest and all its default plugins once, then waits on a
unix socket. Per job, the worker sends the job (JSON) with four fds (a socket for the answer, the verdict
channel's write end, stdout, stderr). The zygote forks a *keeper* that makes the same namespaces a cold run gets
from bubblewrap (pid, mount, network, ipc, uts, cgroup) and forks the run's *init*, pid 1 of the new pid
namespace. The init builds the file system view the way bwrap would (a fresh tmpfs root, the same read-only and
writable binds, its own /proc, a minimal /dev, `pivot_root`, `/` read-only), drops to the run's uid (no
capabilities left, no new privileges) and forks the *test* process, which sets the limits and only then calls
`pytest.main` with the verdict plugin: student code is imported after all of that, exactly as in a cold run.
The init reaps orphans and leaves with the test process's status; the keeper answers it to the worker.

If the worker goes away (its end of the socket closes), the zygote exits; keepers and runs die with it
(`PR_SET_PDEATHSIG`), and the end of a pid namespace's pid 1 kills everything in it.

    python -I -S sandbox_zygote.py SITE RUNNER_DIR CONTROL_FD
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import importlib
import json
import os
import platform
import resource
import select
import signal
import socket
import sys
from typing import Any

_CLONE = {"ns": 0x00020000, "cgroup": 0x02000000, "uts": 0x04000000, "ipc": 0x08000000, "pid": 0x20000000,
          "net": 0x40000000}  # fmt: skip
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
_MNT_DETACH = 2
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS = 1, 4, 38
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if v is None else v.encode() for v in (src, dst, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {dst}")


def _bind(root: str, src: str, dst: str, readonly: bool) -> None:
    target = root + dst
    if os.path.isdir(src):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()  # noqa: SIM115 - a mount point
    _mount(src, target, None, _MS_BIND | _MS_REC)
    if readonly:
        _mount(None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _enter_view(job: dict[str, Any]) -> None:
    """The run's file system, as bwrap builds it for a cold run (see sandbox.py `_bwrap_args`)."""
    root = job["newroot"]
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
    for src, dst, readonly in job["binds"]:
        _bind(root, src, dst, readonly)
    for target, link in job["symlinks"]:
        os.symlink(target, root + link)
    os.makedirs(root + "/dev", exist_ok=True)
    for dev in ("null", "zero", "full", "random", "urandom"):
        _bind(root, f"/dev/{dev}", f"/dev/{dev}", False)
    os.symlink("/proc/self/fd", root + "/dev/fd")
    os.makedirs(root + "/proc", exist_ok=True)
    _mount("proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV)
    os.chdir(root)
    _check(_libc.syscall(_SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", _MNT_DETACH), "umount old root")
    os.chdir("/")
    _mount(None, "/", None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _become(uid: int | None) -> None:
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to another uid: every capability is gone
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _limit(limits: list[int]) -> None:
    cpu, mem, nproc, fsize = limits
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _test(job: dict[str, Any], channel: int) -> None:
    """pid 2: limits, then pytest with the verdict plugin. Never returns."""
    code = 3
    try:
        _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        _limit(job["limits"])
        os.chdir(job["cwd"])
        sys.pycache_prefix = job["pycache"]
        sys.dont_write_bytecode = True
        key = bytes.fromhex(job.pop("key"))
        _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")
        for name in ("_libc", "ctypes"):  # the guard refuses ctypes; nothing here may keep a way to it
            globals().pop(name, None)
        import gateway_clock
        import gateway_guard
        import gateway_verdict
        import pytest

        plugin = gateway_verdict.VerdictChannel()
        gateway_guard.arm(channel, key, job["cwd"], job["reference"])
        del key
        code = int(pytest.main(job["args"], plugins=[plugin, gateway_clock.CpuClock(job["cpu_seconds"])]))
    except BaseException as exc:  # noqa: BLE001 - the channel, not this code, tells the worker what happened
        with contextlib.suppress(Exception):
            os.write(2, f"warm runner: {type(exc).__name__}: {exc}\n".encode())
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _init(job: dict[str, Any], channel: int, out: int, err: int, lifeline: int) -> None:
    """pid 1 of the run's namespaces: view and user, then the test process; reaps orphans like bwrap's init and
    leaves with its status (128 + N for a signal, as bwrap reports it). Never returns."""
    status = 255 << 8
    try:
        _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        _enter_view(job)
        for fd in range(3, 1024):
            if fd not in (channel, lifeline):
                with contextlib.suppress(OSError):
                    os.close(fd)
        os.closerange(1024, 65536)
        os.set_inheritable(channel, False)
        with contextlib.suppress(OSError):
            socket.sethostname("sandbox")
        os.environ.clear()
        os.environ.update(job["env"])
        _become(job["uid"])
        # Again: a change of credentials clears the parent-death signal.
        _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        if select.select([lifeline], [], [], 0)[0]:
            os._exit(255)  # the keeper died before the signal was armed again: nobody would end this run
        os.close(lifeline)
        test = os.fork()
        if test == 0:
            _test(job, channel)
        os.close(channel)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == test:
                break
    except BaseException as exc:  # noqa: BLE001
        with contextlib.suppress(Exception):
            os.write(2, f"warm runner: {type(exc).__name__}: {exc}\n".encode())
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status))


def _keep(job: dict[str, Any], answer: socket.socket, channel: int, out: int, err: int) -> None:
    """The keeper: make the namespaces, start the run in them, answer its wait status. Never returns."""
    status = 255 << 8
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        try:
            for procs in job.get("cgroup", []):  # the run's cgroup(s), before the run's first process exists
                with open(procs, "w", encoding="ascii") as handle:
                    handle.write(str(os.getpid()))
        except OSError as exc:
            answer.sendall(json.dumps({"refused": f"join {procs}: {exc.strerror or exc}"}).encode() + b"\n")
            raise
        _check(_libc.unshare(sum(_CLONE.values())), "unshare")
        lifeline, held = os.pipe()  # readable (EOF) in the run once this keeper is gone
        pid = os.fork()
        if pid == 0:
            answer.close()
            os.close(held)
            _init(job, channel, out, err, lifeline)
        for fd in (channel, out, err, lifeline):
            os.close(fd)
        answer.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
    except BaseException as exc:  # noqa: BLE001
        with contextlib.suppress(Exception):
            os.write(err, f"warm runner: {type(exc).__name__}: {exc}\n".encode())
    with contextlib.suppress(OSError):
        answer.sendall(json.dumps({"status": status}).encode() + b"\n")
    os._exit(0)


def _receive(control: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    fds = array.array("i")
    data, ancillary, _, _ = control.recvmsg(1 << 20, socket.CMSG_LEN(4 * fds.itemsize))
    if not data:
        return None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return json.loads(data), list(fds)


def main(argv: list[str]) -> None:
    site, runner, control_fd = argv[0], argv[1], int(argv[2])
    sys.path[:0] = [runner, site]
    import gateway_clock  # noqa: F401 - imported once here, inherited by every run
    import gateway_guard  # imported once here, inherited by every run
    import gateway_verdict  # noqa: F401
    import pytest  # noqa: F401
    from _pytest.config import default_plugins

    for name in default_plugins:
        with contextlib.suppress(ImportError):
            importlib.import_module(f"_pytest.{name}")
    gateway_guard.prepare()  # the code sets each run's guard starts from (copied, then dropped, by `arm`)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    control = socket.socket(fileno=control_fd)
    control.sendall(b"ready\n")
    while True:
        received = _receive(control)
        if received is None:
            os._exit(0)  # the worker is gone: keepers and runs follow through PR_SET_PDEATHSIG
        job, fds = received
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            continue
        answer_fd, channel, out, err = fds
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            control.close()
            _keep(job, socket.socket(fileno=answer_fd), channel, out, err)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1:])
