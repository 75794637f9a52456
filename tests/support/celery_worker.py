"""Start and stop a real Celery worker process for tests (shared by the Celery and gateway test suites).

The worker runs `gateway worker start` in its own process group with exactly the environment given, so it
reads its settings the way production does. Readiness is a real ping answered over the broker, waited for
with a deadline. Stopping kills the whole process group (pool children and embedded beat included): no orphans.
At the end of a `running_worker` block the group is killed at once (no warm shutdown: see `stop_worker`).

    with running_worker(env, queues=("default",), concurrency=1) as worker:
        ...  # worker.hostname answers pings; worker.log_text() for diagnostics
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.settings import Settings
from tests.support.waiting import STARTUP

ALL_QUEUES: tuple[str, ...] = ("high_priority", "default", "low_priority", "gateway_only")
GATEWAY_BIN = Path(sys.executable).with_name("gateway")
REPO_ROOT = Path(__file__).resolve().parents[2]
# Test-only tasks (a task that blocks until released); pass to `include=` to register them in a worker.
TEST_TASKS_MODULE = "tests.support.celery_test_tasks"


class _ExplicitSettings(Settings):
    """Settings from the given values only, never from this process's environment."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_sources: Any):  # type: ignore[no-untyped-def,override]
        return (init_settings,)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The settings a process started with `env` will read (so the test side talks to the same broker)."""
    fields = Settings.model_fields
    values = {key.lower(): value for key, value in env.items() if key.lower() in fields}
    return _ExplicitSettings(**values)


def base_env(extra: Mapping[str, str], data_dir: Path) -> dict[str, str]:
    """A worker environment: PATH/HOME etc. from this process, no settings variable but the ones in `extra`.

    The repository root goes on PYTHONPATH so a worker can `--include` test-only task modules from `tests/`.
    """
    settings_vars = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in settings_vars}
    env["GATEWAY_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    """A running worker: its process (leader of its own group), hostname, log file and the env it got."""

    process: subprocess.Popen[bytes]
    hostname: str
    log_path: Path
    env: dict[str, str]
    _app: Any = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def app(self) -> Any:
        """A Celery app with the worker's settings (for ping/inspect/control from the test side)."""
        if self._app is None:
            from backends.celery.factory import create_app

            self._app = create_app(settings_from_env(self.env))
        return self._app

    def ping(self, timeout: float = 1.0) -> bool:
        replies = self.app().control.ping(destination=[self.hostname], timeout=timeout) or []
        return any(self.hostname in reply for reply in replies)


def start_worker(
    env: Mapping[str, str],
    *,
    queues: Sequence[str] = ALL_QUEUES,
    concurrency: int = 1,
    hostname: str | None = None,
    include: Sequence[str] = (),
    log_dir: Path | None = None,
    beat: bool = False,
    loglevel: str = "INFO",
    ready_timeout: float = STARTUP,
    prefix: Sequence[str] = (),
) -> WorkerProcess:
    """Start `gateway worker start` and return once it answers a ping (or raise with its log).

    `prefix` runs it under another command (e.g. `ip netns exec NAME`: a worker on a test's second host)."""
    name = hostname or f"test-{uuid.uuid4().hex[:8]}@localhost"
    log_dir = log_dir or Path(env.get("GATEWAY_DATA_DIR", "/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{name.split('@')[0]}.log"
    cmd = [
        str(GATEWAY_BIN), "worker", "start",
        f"--queues={','.join(queues)}", f"--concurrency={concurrency}",
        f"--hostname={name}", f"--loglevel={loglevel}",
        "--beat" if beat else "--no-beat",
    ]  # fmt: skip
    for module in include:
        cmd.append(f"--include={module}")
    cmd = [*prefix, *cmd]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd()
        )
    worker = WorkerProcess(process=process, hostname=name, log_path=log_path, env=dict(env))
    try:
        wait_until_ready(worker, ready_timeout)
    except BaseException:
        stop_worker(worker, graceful=False)
        raise
    return worker


def wait_until_ready(worker: WorkerProcess, timeout: float) -> None:
    """Poll for a ping answer until `timeout`; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.process.returncode}:\n{worker.log_text()[-4000:]}")
        if " ready." in worker.log_text() and worker.ping(timeout=1.0):
            return
        time.sleep(0.2)  # polling interval of a deadline loop, not synchronisation
    raise TimeoutError(f"worker {worker.hostname} not ready after {timeout}s:\n{worker.log_text()[-4000:]}")


def _signal_group(worker: WorkerProcess, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.pid, sig)


def kill_worker(worker: WorkerProcess) -> None:
    """SIGKILL the whole worker (main process and pool children): the crash a test wants to survive."""
    _signal_group(worker, signal.SIGKILL)
    worker.process.wait(timeout=30)


def stop_worker(worker: WorkerProcess, timeout: float = 15.0, *, graceful: bool = True) -> None:
    """SIGTERM the main process (warm shutdown), then SIGKILL the whole group, whatever is left of it.

    `graceful=False` skips the warm shutdown: for a fixture's teardown, once the test has asserted everything it
    wanted. An idle worker's warm shutdown takes about 7 s on 2 cores (two rounds of the consumer loop, then the
    pool's thread joins), which summed over every worker of the suite was minutes of teardown. A test that
    stops a worker as part of its scenario (an engine that went away) keeps the warm shutdown.
    """
    if graceful and worker.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=timeout)
    # Pool children may outlive their parent for a moment: the group is killed either way.
    _signal_group(worker, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.process.wait(timeout=10)
    if worker._app is not None:
        with contextlib.suppress(Exception):
            worker._app.close()


@contextlib.contextmanager
def running_worker(
    env: Mapping[str, str],
    *,
    queues: Sequence[str] = ALL_QUEUES,
    concurrency: int = 1,
    hostname: str | None = None,
    include: Sequence[str] = (),
    log_dir: Path | None = None,
    beat: bool = False,
    ready_timeout: float = STARTUP,
) -> Iterator[WorkerProcess]:
    """A worker for the duration of the block; always stopped by its process group."""
    worker = start_worker(
        env,
        queues=queues,
        concurrency=concurrency,
        hostname=hostname,
        include=include,
        log_dir=log_dir,
        beat=beat,
        ready_timeout=ready_timeout,
    )
    try:
        yield worker
    finally:
        stop_worker(worker, graceful=False)  # the block is over: nothing is asserted about its shutdown
