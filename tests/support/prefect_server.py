"""Start and stop a real Prefect server and a real runner (`gateway prefect serve`) for tests.

Plain functions and context managers so both the Prefect engine tests and the gateway's end-to-end tests can
share them. Every process is started in its own session (process group) and stopped by that group at the end,
so no flow-run subprocess outlives the test run. Nothing here uses a fixed port or a shared folder.

Stable signatures (others import these):

- `free_port() -> int`
- `prefect_process_env(api_url, prefect_home, extra=None) -> dict[str, str]`
- `running_prefect_server(tmp_dir, *, database_url=None, extra_env=None, timeout=STARTUP) -> Iterator[str]` (api url)
- `running_runner(env, *, limit=4, test_flows=False, deployment_name="system", wait_for=None, log_path=None,
  timeout=STARTUP) -> Iterator[subprocess.Popen[bytes]]` (wait_for defaults to `test-assignment/<deployment_name>`)
- `stop_process_group(proc, grace=10.0) -> None`
- `wait_until(check, what, timeout=60.0) -> T` (poll a condition with a deadline)

Every wait here counts a slow answer (a timeout, a refused connection, a 5xx: `tests/support/waiting.py`) as
"not ready yet" and gives up only at its deadline, or at once when the process it waits for has exited.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import httpx

from tests.support import waiting

T = TypeVar("T")

STARTUP = waiting.STARTUP

VENV_BIN = Path(sys.executable).parent

# Variables from the developer's shell that must never reach a test's Prefect process (they would point it at
# another server, another database or another profile).
_SCRUBBED_PREFIXES = ("PREFECT_",)
_SCRUBBED = {
    "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB",
    "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB",
    "GATEWAY_DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "GATEWAY_DATA_DIR",
}  # fmt: skip


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it; good enough for one local test server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_base_env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key not in _SCRUBBED and not key.startswith(_SCRUBBED_PREFIXES)
    }


def prefect_process_env(api_url: str, prefect_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for any Prefect process in a test: explicit API URL (never ephemeral mode), own home."""
    env = _clean_base_env()
    env.update(
        {
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_CLI_PROMPT": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process's whole group, then SIGKILL what is left after `grace` seconds."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        proc.wait()
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; its children may not be: finish the group off.
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        break
    proc.wait()


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds (slow answers
    are "not yet": `tests/support/waiting.py`)."""
    return waiting.wait_until(check, what, timeout)


def _tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def wait_for_health(api_url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Poll `/health` until it answers 200; a slow or failed answer is "not yet"; fail early (with the log) if the
    server process exits, or at `timeout`."""
    with httpx.Client(timeout=10.0) as client:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{_tail(log_path)}")
            client.get(f"{api_url}/health").raise_for_status()
            return True

        try:
            waiting.wait_until(healthy, "prefect server /health", timeout, interval=0.25)
        except AssertionError as exc:
            raise TimeoutError(f"prefect server not healthy after {timeout:.0f}s ({exc}):\n{_tail(log_path)}") from None


_template_lock = threading.Lock()
_template_db: Path | None = None


def _sqlite_template(timeout: float) -> Path:
    """A Prefect SQLite database as a first server start leaves it, made once per process and then copied.

    A server on an empty file runs every migration and registers every block type before it answers (about 7 s
    on 2 cores); on a copy of this one it answers in about 3 s. The suite starts a fresh server many times
    (each stack, each outage test), so this is paid once. The copy is the state of a server that never ran a
    flow: every test still gets a database of its own.
    """
    global _template_db
    with _template_lock:
        if _template_db is None:
            root = Path(tempfile.mkdtemp(prefix="prefect-template-"))
            atexit.register(shutil.rmtree, root, True)
            with _server(root / "server", None, None, timeout, None):
                pass
            db = root / "server" / "prefect.db"
            with closing(sqlite3.connect(db)) as conn:  # the WAL folded in: one file to copy
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            _template_db = db
        return _template_db


@contextmanager
def running_prefect_server(
    tmp_dir: Path,
    *,
    database_url: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = STARTUP,
    port: int | None = None,
) -> Iterator[str]:
    """A real `prefect server start` on a free port (or `port`); yields its API URL (`http://127.0.0.1:<port>/api`).

    Started again with the same `tmp_dir` and `port`, it comes back with the same database and URL (outage tests).

    SQLite under `tmp_dir` unless `database_url` (e.g. `postgresql+asyncpg://...`) is given; a new SQLite file
    starts as a copy of a migrated, never used one (`_sqlite_template`). Waits for `/api/health` up to `timeout`
    seconds. Stopped by process group.
    """
    if database_url is None and not (tmp_dir / "prefect.db").exists():
        template = _sqlite_template(timeout)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, tmp_dir / "prefect.db")
    with _server(tmp_dir, database_url, extra_env, timeout, port) as api_url:
        yield api_url


@contextmanager
def _server(
    tmp_dir: Path, database_url: str | None, extra_env: Mapping[str, str] | None, timeout: float, port: int | None
) -> Iterator[str]:
    """`prefect server start` on `tmp_dir` (see `running_prefect_server`), whatever its database holds."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    home = tmp_dir / "prefect-home"
    home.mkdir(exist_ok=True)
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    db_url = database_url or f"sqlite+aiosqlite:///{tmp_dir / 'prefect.db'}"
    env = prefect_process_env(
        api_url,
        home,
        {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": db_url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            **(extra_env or {}),
        },
    )
    log_path = tmp_dir / "prefect-server.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_health(api_url, proc, log_path, timeout)
        yield api_url
    finally:
        stop_process_group(proc)


def deployment_polled(api_url: str, names: Iterable[str], since: datetime) -> bool:
    """True when every `flow/deployment` in `names` exists and was polled by a runner after `since`."""
    with httpx.Client(base_url=api_url, timeout=5.0) as client:
        for name in names:
            response = client.get(f"/deployments/name/{name}")
            if response.status_code != 200:  # 404 before the runner registered it; 5xx while the server is busy
                return False
            last = response.json().get("last_polled")
            if not last or datetime.fromisoformat(last.replace("Z", "+00:00")) < since:
                return False
    return True


@contextmanager
def running_runner(
    env: Mapping[str, str],
    *,
    limit: int = 4,
    test_flows: bool = False,
    deployment_name: str = "system",
    wait_for: Iterable[str] | None = None,
    log_path: Path | None = None,
    timeout: float = STARTUP,
) -> Iterator[subprocess.Popen[bytes]]:
    """`gateway prefect serve` as a subprocess; yields it once every deployment in `wait_for` was polled.

    `env` must carry PREFECT_API_URL and PREFECT_HOME (see `prefect_process_env`) and GATEWAY_DATA_DIR (where the
    flows persist their results). `test_flows` also serves the test-only deployments (`wait`, `fail`).
    The runner and its flow-run subprocesses share one process group, stopped at the end.
    """
    wait_for = list(wait_for or [f"test-assignment/{deployment_name}"])
    api_url = env["PREFECT_API_URL"]
    args = [str(VENV_BIN / "gateway"), "prefect", "serve", "--limit", str(limit)]
    if test_flows:
        args.append("--test-flows")
    args += ["--deployment-name", deployment_name]
    log_path = log_path or Path(env.get("PREFECT_HOME", ".")) / f"runner-{free_port()}.log"
    started = datetime.now(UTC)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def polled() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"runner exited with {proc.returncode}:\n{_tail(log_path)}")
        return deployment_polled(api_url, wait_for, started)

    try:
        try:
            waiting.wait_until(polled, f"the runner to poll {wait_for}", timeout, interval=0.25)
        except AssertionError as exc:
            raise TimeoutError(f"runner did not poll {wait_for} ({exc}):\n{_tail(log_path)}") from None
        yield proc
    finally:
        stop_process_group(proc)
