"""The worker's side of the warm runner (`sandbox_zygote.py`): start it once per worker process, hand it jobs.

The zygote runs as root (it must make namespaces and mounts), started from the runtime's interpreter with
`-I -S`, its code and the verdict plugin copied into `<runtime>/runner` (root's, read-only to runs). A job goes
over a SOCK_SEQPACKET socket with four fds; the answer (the run's pid, then its wait status) comes back on a
socket pair made for that job, so concurrent jobs from threads of one worker never wait for each other. A
worker process that was forked (Celery's prefork pool) starts its own zygote: the key is the pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from backends.work import sandbox_clock, sandbox_guard, sandbox_plugin, sandbox_zygote
from backends.work.errors import InfrastructureError
from backends.work.sandbox_runtime import Runtime

_lock = threading.Lock()
_runners: dict[tuple[int, str, str], WarmRunner] = {}


class WarmProcess:
    """One job in the warm runner, looked at like a `Popen`: `poll`, `wait`, `returncode`."""

    def __init__(self, answer: socket.socket) -> None:
        self.answer = answer
        self.buffer = b""
        self.pid: int | None = None
        self.returncode: int | None = None
        self.refused: str | None = None  # the keeper could not start the run (it could not join the run's cgroup)

    def _read(self, timeout: float) -> None:
        if self.returncode is not None:
            return
        ready, _, _ = select.select([self.answer], [], [], timeout)
        if not ready:
            return
        chunk = self.answer.recv(4096)
        if not chunk:
            self.returncode = self.returncode if self.returncode is not None else -9  # the keeper vanished
            return
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "pid" in message:
                self.pid = int(message["pid"])
            if "refused" in message:
                self.refused = str(message["refused"])
            if "status" in message:
                self.returncode = os.waitstatus_to_exitcode(int(message["status"]))

    def poll(self) -> int | None:
        self._read(0)
        return self.returncode

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.returncode is None and time.monotonic() < deadline:
            self._read(0.05)
        if self.returncode is None:
            raise InfrastructureError("the warm runner did not report the end of a run")
        self.answer.close()
        return self.returncode


class WarmRunner:
    """A started zygote; `start` hands it one job."""

    def __init__(self, runtime: Runtime) -> None:
        sources = {
            name: Path(module.__file__).read_bytes()  # type: ignore[arg-type]
            for module, name in (
                (sandbox_zygote, "sandbox_zygote.py"),
                (sandbox_plugin, "gateway_verdict.py"),
                (sandbox_guard, "gateway_guard.py"),
                (sandbox_clock, "gateway_clock.py"),
            )
        }
        digest = hashlib.sha256(b"".join(sources[name] for name in sorted(sources))).hexdigest()[:12]
        runner = runtime.site.parent / f"runner-{digest}"  # a new version of the code gets a new dir
        if not (runner / "sandbox_zygote.py").is_file():
            staging = Path(tempfile.mkdtemp(prefix=".runner-", dir=runtime.site.parent))
            staging.chmod(0o755)
            for name, text in sources.items():
                (staging / name).write_bytes(text)
                (staging / name).chmod(0o644)
            try:
                staging.rename(runner)
            except OSError:  # another worker made it first
                shutil.rmtree(staging, ignore_errors=True)
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.send_lock = threading.Lock()
        self.runner_dir = str(runner)
        cmd = [runtime.python, "-I", "-S", "-B", str(runner / "sandbox_zygote.py"), str(runtime.site), str(runner),
               str(theirs.fileno())]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, pass_fds=(theirs.fileno(),), env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        theirs.close()
        ready, _, _ = select.select([self.control], [], [], 60)
        if not ready or self.control.recv(64) != b"ready\n":
            self.close()
            raise InfrastructureError("the warm runner did not start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, job: dict[str, Any], channel: int, out: int, err: int) -> WarmProcess:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.send_lock:
                socket.send_fds(self.control, [json.dumps(job).encode()], [theirs.fileno(), channel, out, err])
        except OSError as exc:
            mine.close()
            raise InfrastructureError(f"the warm runner refused a job: {exc}") from None
        finally:
            theirs.close()
        return WarmProcess(mine)

    def close(self) -> None:
        self.control.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def warm_runner(runtime: Runtime) -> WarmRunner:
    """This worker process's zygote for `runtime`, started on first use (and again if it died)."""
    key = (os.getpid(), runtime.python, str(runtime.site))
    with _lock:
        runner = _runners.get(key)
        if runner is None or not runner.alive():
            runner = WarmRunner(runtime)
            _runners[key] = runner
        return runner
