"""The sandbox launcher (copied into the sandbox; imports only the standard library and, last, pytest).

It runs as the run's uid inside the namespaces, started with `python -I -S` (no PYTHON* variables, no site
directories, not even the current directory on `sys.path`), so nothing in the student's files is importable
before pytest is: a student `pytest.py` or `_pytest/` in the work dir never shadows the real one. In order:
1. set the resource limits on itself (they then hold for pytest, the student's code and all it starts); the
   CPU limit given here only bounds the start-up: the time limit's CPU clock (`gateway_clock`, from
   `GATEWAY_CPU_SECONDS`) is armed when the pytest session starts, so start-up is never the student's time;
2. point `sys.pycache_prefix` at the worker's read-only bytecode cache (standard library and pytest, compiled
   once per worker), so no `__pycache__` the student writes is ever loaded in place of a reference module;
3. take the verdict channel (a pipe's write end the worker handed over) and the run's key out of the
   environment, make the pipe non-inheritable across exec and this process non-dumpable (no other process of
   the run's uid may read its memory through `/proc/<pid>/mem` or ptrace);
4. import pytest and the verdict plugin from the worker's read-only runtime dir; then, in a thread of its own
   (`gateway_guard.off_main_thread`: no Python signal handler can exist, the main thread only waits), arm the
   guard (`sandbox_guard.py`: the audit hook that holds the key and signs the verdict) and run pytest with the
   plugin registered before any test or student module is imported;
5. leave with `os._exit`, so no `atexit` hook the student registered ever runs.

    python -I -S launch.py SITE PYCACHE CPU_S MEM_BYTES NPROC FSIZE_BYTES -- <pytest args...>
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import sys


def _limit(cpu: int, mem: int, nproc: int, fsize: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _not_dumpable() -> None:
    """PR_SET_DUMPABLE 0, through ctypes (the guard then removes ctypes and refuses it from then on)."""
    import ctypes  # noqa: PLC0415

    ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE


def main(argv: list[str]) -> None:
    site, pycache = argv[0], argv[1]
    cpu, mem, nproc, fsize = (int(v) for v in argv[2:6])
    if argv[6] != "--":
        raise SystemExit("usage: launch.py SITE PYCACHE CPU MEM NPROC FSIZE -- ARGS")
    _limit(cpu, mem, nproc, fsize)
    sys.pycache_prefix = pycache
    sys.dont_write_bytecode = os.environ.pop("GATEWAY_WRITE_PYCACHE", "") != "1"  # only the worker's cache fill
    channel_fd = int(os.environ.pop("GATEWAY_VERDICT_FD"))
    session_cpu = float(os.environ.pop("GATEWAY_CPU_SECONDS"))
    key = bytes.fromhex(os.environ.pop("GATEWAY_VERDICT_KEY"))
    reference = json.loads(os.environ.pop("GATEWAY_REFERENCE_FILES", "[]"))
    os.set_inheritable(channel_fd, False)
    _not_dumpable()
    sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), site]
    import gateway_clock  # noqa: PLC0415 - only after sys.path holds the runtime dir
    import gateway_guard  # noqa: PLC0415 - only after sys.path holds the runtime dir
    import gateway_verdict  # noqa: PLC0415
    import pytest  # noqa: PLC0415
    from _pytest.config import default_plugins  # noqa: PLC0415

    for name in default_plugins:  # loaded before the guard is armed, as in the warm runner: all of them trusted
        with contextlib.suppress(ImportError):
            importlib.import_module(f"_pytest.{name}")

    plugin = gateway_verdict.VerdictChannel()
    held = [key]  # taken by the session: no frame or closure of the session's thread keeps the key
    del key

    def session() -> None:
        """The session's thread: arm, pytest, leave (the main thread only waits: `gateway_guard.off_main_thread`)."""
        code = 3
        try:
            gateway_guard.arm(channel_fd, held.pop(), os.getcwd(), reference)
            code = int(pytest.main(argv[7:], plugins=[plugin, gateway_clock.CpuClock(session_cpu)]))
        except BaseException:  # noqa: BLE001 - whatever happened, the channel (not this exit code) tells the worker
            code = 3
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a student may have closed or replaced the stream
                stream.flush()
        os._exit(code)

    gateway_guard.off_main_thread(session)


if __name__ == "__main__":
    main(sys.argv[1:])
