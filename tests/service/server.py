"""A real gateway API process for tests: uvicorn in its own process group, on a free port, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import waiting
from tests.support.celery_worker import base_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GatewayServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text(errors="replace")
        return ""

    def client(self, auth: tuple[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, timeout=30)


def start_server(extra_env: Mapping[str, str], data_dir: Path, ready_timeout: float = waiting.STARTUP) -> GatewayServer:
    port = free_port()
    env = base_env(extra_env, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"gateway-{port}.log"
    cmd = [sys.executable, "-m", "uvicorn", "gateway.api.app:create_app", "--factory", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = GatewayServer(process, port, log_path, env)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{server.log_text()[-4000:]}")
        httpx.get(f"{server.url}/api/health", timeout=10).raise_for_status()  # slow or 5xx: not yet
        return True

    try:
        waiting.wait_until(healthy, "the gateway's /api/health", ready_timeout, interval=0.1)
    except AssertionError as exc:
        stop_server(server)
        raise TimeoutError(f"gateway not ready ({exc}):\n{server.log_text()[-4000:]}") from None
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: GatewayServer) -> None:
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=10)


@contextlib.contextmanager
def running_server(extra_env: Mapping[str, str], data_dir: Path) -> Iterator[GatewayServer]:
    server = start_server(extra_env, data_dir)
    try:
        yield server
    finally:
        stop_server(server)


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` passes (AssertionError); a slow
    answer (timeout, connection error, 5xx) is "not yet" (`tests/support/waiting.py`)."""
    return waiting.wait_until(predicate, what, timeout, interval)
