"""The sandbox launcher (copied into the sandbox; imports only the standard library).

Runs as the sandbox user, sets the resource limits on itself, then `exec`s pytest so the limits hold for
pytest, the student's code and every process it starts. Setting limits here instead of in a `preexec_fn`
keeps the parent safe to use from threaded workers.

    python launch.py CPU_S MEM_BYTES NPROC FSIZE_BYTES -- <python args...>
"""

from __future__ import annotations

import os
import resource
import sys


def main(argv: list[str]) -> None:
    cpu, mem, nproc, fsize = (int(v) for v in argv[:4])
    if argv[4] != "--":
        raise SystemExit("usage: launch.py CPU MEM NPROC FSIZE -- ARGS")
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.execv(sys.executable, [sys.executable, *argv[5:]])


if __name__ == "__main__":
    main(sys.argv[1:])
