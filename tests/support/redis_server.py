"""A private redis-server a test may SIGKILL and start again on the same port (the shared one must not be touched).

With `persistent=True` it writes an append-only file with an fsync per write, so a restart keeps what a production
Redis with AOF keeps: queued messages and the unacknowledged ones (what the visibility timeout restores). The
process runs in its own process group and is stopped by its pid, never by name.

    with redis_server(tmp / "redis", persistent=True) as redis:
        redis.kill(); redis.start()  # the same port, the same data directory
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.prefect_server import free_port
from tests.support.waiting import wait_until


@dataclass
class RedisServer:
    port: int
    workdir: Path
    persistent: bool
    bind: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def env(self, db: int = 0) -> dict[str, str]:
        return {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(self.port), "REDIS_DB": str(db)}

    def client(self, db: int = 0):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_connect_timeout=2, socket_timeout=5)

    def _pings(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False
        finally:
            client.close()

    def start(self) -> None:
        """Start (again) on the same port and directory; returns once it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        options = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        # Bound beyond loopback (a test's link to its second host): Redis refuses such clients without a password.
        options += ["--protected-mode", "no" if self.bind != "127.0.0.1" else "yes"]
        cmd = ["redis-server", "--port", str(self.port), "--bind", *self.bind.split(), "--save", "", *options,
               "--dir", str(self.workdir)]  # fmt: skip
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        wait_until(self._pings, f"redis-server on port {self.port}", timeout=30, interval=0.05)

    def kill(self) -> None:
        """SIGKILL: a crash as far as every client can tell."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None


@contextlib.contextmanager
def redis_server(
    workdir: Path, *, persistent: bool = False, port: int | None = None, bind: str = "127.0.0.1"
) -> Iterator[RedisServer]:
    server = RedisServer(port or free_port(), workdir, persistent, bind)
    server.start()
    try:
        yield server
    finally:
        server.kill()
