"""The `gateway up` supervisor with real processes: health-gated start, restart on crash, no orphans on stop."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from gateway.devstack.supervisor import ServiceFailedError, ServiceSpec, Supervisor


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http_ok(port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie still answers kill(0))."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# A server that also forks a grandchild which would outlive a naive kill of the leader.
SERVER_WITH_GRANDCHILD = """
import http.server, os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"])
open(sys.argv[2], "w").write(str(child.pid))
http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port=int(sys.argv[1]), bind="127.0.0.1")
"""


def test_start_waits_for_health_and_stop_leaves_no_orphans(tmp_path: Path) -> None:
    port = _free_port()
    pidfile = tmp_path / "grandchild.pid"
    supervisor = Supervisor(tmp_path / "logs", dict(os.environ))
    spec = ServiceSpec("web", [sys.executable, "-c", SERVER_WITH_GRANDCHILD, str(port), str(pidfile)],
                       health=lambda: _http_ok(port), start_timeout=30)  # fmt: skip
    service = supervisor.launch(spec)
    try:
        supervisor.wait_healthy(service)
        assert _http_ok(port)
        grandchild = int(pidfile.read_text())
        leader = service.process.pid
        assert _alive(grandchild)
    finally:
        supervisor.stop_all(grace=5)
    assert not _alive(leader)
    assert not _alive(grandchild)


def test_a_crashed_service_is_restarted(tmp_path: Path) -> None:
    port = _free_port()
    supervisor = Supervisor(tmp_path / "logs", dict(os.environ), max_restarts=1)
    spec = ServiceSpec("web", [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)],
                       health=lambda: _http_ok(port), start_timeout=30)  # fmt: skip
    service = supervisor.launch(spec)
    try:
        supervisor.wait_healthy(service)
        first_pid = service.process.pid
        os.killpg(first_pid, 9)
        service.process.wait()
        assert supervisor.check_and_restart() == ["web"]
        assert service.process.pid != first_pid and _http_ok(port)
        os.killpg(service.process.pid, 9)
        service.process.wait()
        with pytest.raises(ServiceFailedError, match="keeps exiting"):
            supervisor.check_and_restart()
    finally:
        supervisor.stop_all(grace=5)


def test_a_service_that_exits_at_start_names_its_log(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", dict(os.environ))
    spec = ServiceSpec("broken", [sys.executable, "-c", "raise SystemExit(3)"], health=lambda: False)
    service = supervisor.launch(spec)
    try:
        with pytest.raises(ServiceFailedError, match=r"broken exited with code 3; see .*broken\.log"):
            supervisor.wait_healthy(service)
    finally:
        supervisor.stop_all(grace=1)


SUPERVISOR_THAT_GETS_KILLED = """
import os, sys, time
from pathlib import Path
from gateway.devstack.supervisor import ServiceSpec, Supervisor
sup = Supervisor(Path(sys.argv[1]), dict(os.environ))
svc = sup.launch(ServiceSpec("idle", [sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"], lambda: True))
print(svc.process.pid, flush=True)
while True:
    time.sleep(1)
"""


def test_children_die_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves `gateway up` no chance to clean up: the kernel's parent-death signal must do it."""
    import subprocess
    import time

    parent = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR_THAT_GETS_KILLED, str(tmp_path / "logs")], stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
