"""The sandbox launcher (copied into the sandbox; imports only the standard library).

Runs as the sandbox user, sets the resource limits on itself, then starts pytest so the limits hold for
pytest, the student's code and every process it starts. Setting limits here instead of in a `preexec_fn`
keeps the parent safe to use from threaded workers.

The launcher stays behind as a guardian: the wall-clock limit is enforced by the process that started the
sandbox (a Celery worker, a Prefect flow run), and if that process dies (SIGKILL, OOM) nothing would stop the
run any more. The guardian asks the kernel for a signal when its parent dies (`PR_SET_PDEATHSIG`) and then
kills its whole process group, so a sandbox never outlives the worker that owns it.

    python launch.py CPU_S MEM_BYTES NPROC FSIZE_BYTES -- <python args...>
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _kill_own_group(*_: object) -> None:
    os.killpg(0, signal.SIGKILL)


def _die_with_parent() -> None:
    """Kill the process group when the parent dies; also when it died before the request took effect."""
    parent = os.getppid()
    signal.signal(signal.SIGTERM, _kill_own_group)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's own clean-up is all there is
        return
    if os.getppid() != parent:
        _kill_own_group()


def _exit_like(status: int) -> None:
    """Leave with the child's exit status, re-raising the signal that ended it (the caller reads -SIGNAL)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    raise SystemExit(os.waitstatus_to_exitcode(status))


def main(argv: list[str]) -> None:
    cpu, mem, nproc, fsize = (int(v) for v in argv[:4])
    if argv[4] != "--":
        raise SystemExit("usage: launch.py CPU MEM NPROC FSIZE -- ARGS")
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    child = os.fork()
    if child == 0:
        os.execv(sys.executable, [sys.executable, *argv[5:]])
    _die_with_parent()
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    _exit_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
