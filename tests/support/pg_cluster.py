"""A PostgreSQL cluster of a test's own: initdb, start, stop and start again, from the Debian package binaries.

A fault test stops the database under a running gateway; on the shared server that would break every other test,
so the test gets a cluster of its own (trust auth on 127.0.0.1, a free port, its files in a temp dir), removed at
the end. As root, the server runs as the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def postgres_bin() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` with initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgCluster:
    bin: Path
    root: Path
    port: int
    run_as: str | None  # a user to run the server as (when we are root)
    # Where it listens (e.g. also a test network namespace's peer address: tests/support/netns.py).
    listen: str = "127.0.0.1"
    netns: str | None = None  # the network namespace it runs in (a test's second host)
    options: str = ""  # more server options (`-c name=value ...`), e.g. a bench's `pg_stat_statements`

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        """Start and wait until it accepts connections (`pg_ctl -w`)."""
        opts = f"-p {self.port} -c listen_addresses={self.listen} -k {self.root} -c fsync=off {self.options}".strip()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop it; `immediate` is a crash as far as clients can tell (no goodbye to the connections)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def env(self, database: str = "postgres") -> dict[str, str]:
        return {
            "POSTGRES_HOST": self.listen.split(",")[0],
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": "postgres",
            "POSTGRES_DB": database,
        }


@contextlib.contextmanager
def pg_cluster(
    keep_log: Path | None = None, *, listen: str = "127.0.0.1", netns: str | None = None, options: str = ""
) -> Iterator[PgCluster]:
    """A fresh cluster, started; stopped and removed at the end (its server log copied to `keep_log`)."""
    binaries = postgres_bin()
    if binaries is None:
        raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    root = Path(tempfile.mkdtemp(prefix="gwtest-pg-"))
    run_as = None
    if os.geteuid() == 0:
        run_as = "postgres"
        entry = pwd.getpwnam(run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = PgCluster(binaries, root, _free_port(), run_as, listen, netns, options)
    try:
        cluster._run("initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        if listen != "127.0.0.1":  # clients on the other end of a test's link (its own /30) are let in too
            with open(cluster.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")
        cluster.start()
        yield cluster
    finally:
        cluster.stop("immediate")
        if keep_log is not None and (root / "server.log").exists():
            shutil.copyfile(root / "server.log", keep_log)
        shutil.rmtree(root, ignore_errors=True)
