"""A small process supervisor for `gateway up`: start, health-check, restart, and stop child processes.

Each child runs in its own session (process group), so stopping it also stops everything it forked (a prefork
Celery pool, the Prefect server's workers): Ctrl-C leaves no orphan behind. Output goes to one log file per
child under the data folder, so the terminal stays readable and a failed start can point at its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HealthCheck = Callable[[], bool]


@dataclass
class ServiceSpec:
    """One supervised process: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    health: HealthCheck
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0


@dataclass
class RunningService:
    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    restarts: int = 0


class ServiceFailedError(RuntimeError):
    """A service exited or never became healthy; the message names its log file."""


class Supervisor:
    """Starts services in order, waits for each to be healthy, restarts crashed ones, stops all in reverse."""

    def __init__(self, log_dir: Path, base_env: dict[str, str], max_restarts: int = 3) -> None:
        self.log_dir = log_dir
        self.base_env = base_env
        self.max_restarts = max_restarts
        self.services: list[RunningService] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def _spawn(self, spec: ServiceSpec) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = self.log_dir / f"{spec.name}.log"
        log = log_path.open("ab")
        env = {**self.base_env, **spec.env}
        process = subprocess.Popen(  # noqa: S603 - argv is built by the gateway itself
            spec.argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,  # noqa: PLW1509 - the supervisor spawns from its main thread
        )
        log.close()
        return process, log_path

    def launch(self, spec: ServiceSpec) -> RunningService:
        """Start `spec` without waiting, so slow starters (the Prefect server) overlap with the others."""
        process, log_path = self._spawn(spec)
        service = RunningService(spec, process, log_path)
        self.services.append(service)
        return service

    def wait_healthy(self, service: RunningService, on_wait: Callable[[float], None] | None = None) -> None:
        """Block until the service's health check passes; raise `ServiceFailedError` if it exits or times out."""
        started = time.monotonic()
        deadline = started + service.spec.start_timeout
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise ServiceFailedError(
                    f"{service.spec.name} exited with code {service.process.returncode}; see {service.log_path}"
                )
            try:
                if service.spec.health():
                    return
            except Exception:  # noqa: BLE001 - a health probe that raises simply means "not ready yet"
                pass
            if on_wait is not None:
                on_wait(time.monotonic() - started)
            time.sleep(0.25)
        raise ServiceFailedError(
            f"{service.spec.name} was not healthy after {service.spec.start_timeout:.0f}s; see {service.log_path}"
        )

    def check_and_restart(self) -> list[str]:
        """Restart any service whose process exited; return what was restarted. Gives up after max_restarts."""
        restarted = []
        for service in self.services:
            if service.process.poll() is None:
                continue
            if service.restarts >= self.max_restarts:
                raise ServiceFailedError(
                    f"{service.spec.name} keeps exiting (code {service.process.returncode}); see {service.log_path}"
                )
            service.restarts += 1
            service.process, service.log_path = self._spawn(service.spec)
            self.wait_healthy(service)
            restarted.append(service.spec.name)
        return restarted

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM every process group in reverse start order, then SIGKILL what is left after `grace`."""
        for service in reversed(self.services):
            _signal_group(service.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in reversed(self.services):
            remaining = max(0.1, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=remaining)
            # The leader may be gone while its children linger: the group gets a final SIGKILL either way.
            _signal_group(service.process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=5)
            _wait_group_gone(service.process.pid, timeout=5)
        self.services.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _terminate_with_parent() -> None:
    """In the child: ask the kernel for SIGTERM when the supervisor dies, however it dies (SIGKILL, a broken
    pipe, a crash), so a child never outlives `gateway up` even when its own clean-up could not run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


_PR_SET_PDEATHSIG = 1


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group (psutil lists them; the group id is the kernel's)."""
    members = []
    for process in psutil.process_iter(["status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(process.pid) == pgid:
                members.append(process.pid)
    return members


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """SIGKILL is asynchronous: return only once no member of the group is still running (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
