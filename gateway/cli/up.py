"""`gateway up`: the whole stack on one machine, with no server installed, in one command.

Starts a Prefect server, a Celery worker, the Prefect runner (once its server answers) and the API, all on the
embedded default under the data folder, each as a supervised child in its own process group (`Supervisor`), so
Ctrl-C or SIGTERM stops every one of them and whatever they forked. Slow starters overlap: the Prefect server
(migrations, ~20 s on 2 cores) and the worker start first, the demo catalog loads while they boot, then the API.
Every child gets the same environment (`PREFECT_API_URL`, `PREFECT_HOME`, `GATEWAY_DATA_DIR`), so they agree on
every URL, and no Prefect process ever falls back to an ephemeral server of its own.

`gateway serve` remains the production command (the API only).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from backends.settings import Settings, get_settings
from gateway.supervisor import RunningService, ServiceFailedError, ServiceSpec, Supervisor

DEFAULT_PREFECT_PORT = 4200
POLL_SECONDS = 0.25


class UpError(RuntimeError):
    """A reason `gateway up` cannot start, worded as the one line the user sees."""


# ---------------------------------------------------------------------------------------------------- ports
def port_free(host: str, port: int) -> bool:
    """Whether a server could bind `host:port` now (SO_REUSEADDR like uvicorn, so TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _any_free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def prefect_api_for_up(settings: Settings) -> str:
    """The Prefect API URL the stack will use: PREFECT_API_URL as given, else 4200 or any free port.

    An explicit URL is the user's choice, so a taken port is an error; the default one is internal, so another
    port is picked instead.
    """
    if settings.prefect_api_url:
        parts = urlsplit(settings.prefect_api_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        if not port_free(host, port):
            raise UpError(
                f"port {port} of PREFECT_API_URL ({host}) is already in use; stop what runs there or unset "
                "PREFECT_API_URL to let `gateway up` pick a port"
            )
        return settings.prefect_api_url
    host = "127.0.0.1"
    port = DEFAULT_PREFECT_PORT if port_free(host, DEFAULT_PREFECT_PORT) else _any_free_port(host)
    return f"http://{host}:{port}/api"


# --------------------------------------------------------------------------------------------------- health
def prefect_server_healthy(api_url: str) -> bool:
    """Prefect's own health route answers `true`."""
    response = httpx.get(api_url.rstrip("/") + "/health", timeout=2.0)
    return response.status_code == 200 and response.json() is True


class RunnerPolled:
    """Health of the runner: its deployment exists and was polled after the *current* process started.

    The start time is taken when the probe first sees a new pid, so after a restart a poll by the dead runner
    does not count as the new one being ready.
    """

    def __init__(self, api_url: str, deployment: str, current_pid: Callable[[], int]) -> None:
        self.api_url = api_url.rstrip("/")
        self.deployment = deployment
        self.current_pid = current_pid
        self._pid: int | None = None
        self._since = datetime.now(UTC)

    def __call__(self) -> bool:
        pid = self.current_pid()
        if pid != self._pid:
            self._pid, self._since = pid, datetime.now(UTC)
        response = httpx.get(f"{self.api_url}/deployments/name/{self.deployment}", timeout=2.0)
        if response.status_code != 200:
            return False
        last = response.json().get("last_polled")
        return bool(last) and datetime.fromisoformat(last.replace("Z", "+00:00")) >= self._since


def celery_workers_up(settings: Settings) -> bool:
    """At least one Celery worker answers, asked through the adapter like the gateway asks.

    A fresh adapter per probe: the adapter caches a "no worker" answer for a few seconds, which would only
    delay the moment the worker shows as ready.
    """
    from backends.registry import make_adapter

    adapter = make_adapter("celery", settings)
    try:
        return adapter.health().workers >= 1
    finally:
        close = getattr(adapter, "close", None)
        if callable(close):
            close()


def api_healthy(base_url: str) -> bool:
    return httpx.get(f"{base_url}/api/health", timeout=2.0).status_code == 200


# ------------------------------------------------------------------------------------------------- children
def gateway_argv() -> list[str]:
    """How to run this same `gateway` command (the venv's script, else this interpreter)."""
    script = shutil.which("gateway", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-c", "from gateway.cli import main; main()"]


def child_env(settings: Settings, prefect_api: str) -> dict[str, str]:
    """The one environment every child gets: same data folder, same Prefect API, Prefect's home under data."""
    env = dict(os.environ)
    env["GATEWAY_DATA_DIR"] = str(settings.data_dir)
    env["PREFECT_API_URL"] = prefect_api
    env["PREFECT_HOME"] = str(settings.data_dir / "prefect-home")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class Plan:
    """What to start and where."""

    host: str
    port: int
    prefect_api: str | None

    @property
    def base_url(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104 - only for display
        return f"http://{shown}:{self.port}"


def service_specs(plan: Plan, settings: Settings, supervisor: Supervisor) -> dict[str, ServiceSpec]:
    gw = gateway_argv()
    specs = {
        "celery-worker": ServiceSpec(
            "celery-worker", [*gw, "worker", "start"], lambda: celery_workers_up(settings), start_timeout=120
        ),
        "api": ServiceSpec(
            "api",
            [*gw, "serve", "--host", plan.host, "--port", str(plan.port)],
            lambda: api_healthy(plan.base_url),
            start_timeout=90,
        ),
    }
    if plan.prefect_api is not None:
        api = plan.prefect_api

        def runner_pid() -> int:
            found = [s.process.pid for s in supervisor.services if s.spec.name == "prefect-runner"]
            return found[0] if found else -1

        from gateway.demo import PREFECT_DEPLOYMENT

        specs["prefect-server"] = ServiceSpec(
            "prefect-server", [*gw, "prefect", "server"], lambda: prefect_server_healthy(api), start_timeout=240
        )
        specs["prefect-runner"] = ServiceSpec(
            "prefect-runner",
            [*gw, "prefect", "serve"],
            RunnerPolled(api, PREFECT_DEPLOYMENT, runner_pid),
            start_timeout=180,
        )
    return specs


# ------------------------------------------------------------------------------------------------ leftovers
CHILDREN_FILE = "up-children.json"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc): tells a pid from a later process that reuses it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def record_children(data_dir: Path, supervisor: Supervisor) -> None:
    """Write who runs (pid + start time), so a later `gateway up` can stop what a killed one left behind."""
    entries = [
        {"name": s.spec.name, "pid": s.process.pid, "start": _start_time(s.process.pid)} for s in supervisor.services
    ]
    tmp = data_dir / f"{CHILDREN_FILE}.tmp"
    tmp.write_text(json.dumps(entries))
    tmp.replace(data_dir / CHILDREN_FILE)


def stop_leftovers(data_dir: Path, grace: float = 10.0) -> list[str]:
    """Stop the process groups an earlier `gateway up` recorded and that still run (it was SIGKILLed).

    Only a process with the recorded pid *and* start time is touched, so a reused pid is never signalled.
    """
    path = data_dir / CHILDREN_FILE
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    alive = [e for e in entries if e.get("start") and _start_time(int(e["pid"])) == e["start"]]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for entry in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(entry["pid"]), sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_start_time(int(e["pid"])) == e["start"] for e in alive):
            time.sleep(0.1)  # polling for the processes to exit, with a deadline
    path.unlink(missing_ok=True)
    return [f"{e['name']} (pid {e['pid']})" for e in alive]


# ----------------------------------------------------------------------------------------------- start-up
class StartupView:
    """Visible progress: a live spinner row per service on a terminal, plain lines otherwise (logs, CI)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/green]"),
            TextColumn("{task.description:<16}"),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.live,
        )
        self.rows: dict[str, TaskID] = {}

    def __enter__(self) -> StartupView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def begin(self, name: str, state: str = "starting") -> None:
        if name in self.rows:
            self.progress.update(self.rows[name], state=state)
        else:
            self.rows[name] = self.progress.add_task(name, total=1, state=state)
        if not self.live:
            self.console.print(f"… {name}: {state}")

    def done(self, name: str, note: str) -> None:
        self.progress.update(self.rows[name], completed=1, state=f"[green]{note}[/green]")
        if not self.live:
            self.console.print(f"✓ {name}: {note}")

    def failed(self, name: str, note: str) -> None:
        self.progress.update(self.rows[name], state=f"[red]{note}[/red]")
        self.progress.stop_task(self.rows[name])


def _probe(service: RunningService) -> bool:
    try:
        return bool(service.spec.health())
    except Exception:  # noqa: BLE001 - a probe that raises means "not ready yet"
        return False


def _log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def start_stack(plan: Plan, settings: Settings, supervisor: Supervisor, view: StartupView) -> Any:
    """Launch everything, overlapping what can overlap; returns the loaded demo once all are healthy."""
    from gateway.catalog import CatalogError
    from gateway.demo import load_demo
    from gateway.store.migrate import SchemaOutOfDate

    specs = service_specs(plan, settings, supervisor)
    pending: dict[str, tuple[RunningService, float]] = {}

    def launch(name: str) -> None:
        view.begin(name)
        pending[name] = (supervisor.launch(specs[name]), time.monotonic())
        record_children(settings.data_dir, supervisor)

    if "prefect-server" in specs:
        launch("prefect-server")
    launch("celery-worker")
    view.begin("demo catalog", "loading")
    started = time.monotonic()
    try:
        demo = load_demo(settings)
    except (SchemaOutOfDate, CatalogError, ValueError) as exc:
        view.failed("demo catalog", "not loaded")
        raise UpError(f"demo catalog not loaded: {exc}") from None
    view.done("demo catalog", f"loaded in {time.monotonic() - started:.1f}s")
    launch("api")
    if "prefect-runner" in specs:
        view.begin("prefect-runner", "waiting for the Prefect server")
    while pending:
        if STOP.is_set():
            raise _Stop("signal")
        for name, (service, since) in list(pending.items()):
            if service.process.poll() is not None:
                view.failed(name, f"exited with code {service.process.returncode}")
                raise ServiceFailedError(
                    f"{name} exited with code {service.process.returncode}; see {service.log_path}\n"
                    f"{_log_tail(service.log_path)}"
                )
            if _probe(service):
                del pending[name]
                view.done(name, f"ready in {time.monotonic() - since:.1f}s (pid {service.process.pid})")
                if name == "prefect-server":
                    launch("prefect-runner")
            elif time.monotonic() - since > service.spec.start_timeout:
                view.failed(name, "not healthy in time")
                raise ServiceFailedError(
                    f"{name} was not healthy after {service.spec.start_timeout:.0f}s; see {service.log_path}\n"
                    f"{_log_tail(service.log_path)}"
                )
        time.sleep(POLL_SECONDS)  # polling interval between health probes
    return demo


# ------------------------------------------------------------------------------------------------ report
def print_ready(plan: Plan, demo: Any, supervisor: Supervisor, console: Console) -> None:
    """Who runs where, the demo logins, and the copy-paste requests (plain text: never wrapped by Rich)."""
    from gateway.demo import ADMIN, CONTENTS, STUDENT, curl_lines

    out = sys.stdout
    console.print()
    api = f"[bold green]gateway up[/bold green]: API at {plan.base_url} (health: {plan.base_url}/api/health)"
    console.print(api, soft_wrap=True)
    if plan.prefect_api:
        console.print(f"Prefect API at {plan.prefect_api}", soft_wrap=True)
    for service in supervisor.services:
        console.print(f"  {service.spec.name:<15} pid {service.process.pid:<8} log {service.log_path}", soft_wrap=True)
    out.write(f"\ndemo logins: student {STUDENT} / {demo.credentials.student_password}")
    out.write(f"   admin {ADMIN} / {demo.credentials.admin_password}\n")
    for content in CONTENTS:
        if content.engine == "prefect" and plan.prefect_api is None:
            continue
        out.write(f"\n# {content.engine}: submit the passing example ({content.path}), poll its status, read it\n")
        for line in curl_lines(demo, plan.base_url, content):
            out.write(line + "\n")
    out.write("\nstatus 0 = COMPLETED; the result is 1.0 with 3 tests passed. Ctrl-C stops everything.\n")
    out.flush()


# ----------------------------------------------------------------------------------------------- signals
class _Stop(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """SIGINT/SIGTERM/SIGHUP arrived: leave the main loop and stop every child.

    A BaseException, like KeyboardInterrupt, so a health probe's `except Exception` cannot swallow it; the
    loops also check `STOP` in case some library code swallowed it anyway.
    """


STOP = threading.Event()


def _raise_stop(signum: int, _frame: object) -> None:
    STOP.set()
    raise _Stop(signal.Signals(signum).name)


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[IO[str]]:
    """One `gateway up` per data folder: two would share a broker folder and a Prefect database."""
    path = data_dir / "up.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise UpError(f"another `gateway up` (pid {owner}) is running on the data folder {data_dir}") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield handle
    finally:
        handle.close()


def supervise(supervisor: Supervisor, console: Console, data_dir: Path) -> None:
    """The main loop: restart what crashed, until a signal (or a service that keeps crashing) ends it."""
    while not STOP.is_set():
        for name in supervisor.check_and_restart():
            record_children(data_dir, supervisor)
            console.print(f"[yellow]{name} exited and was restarted[/yellow]")
        time.sleep(1.0)  # supervision interval


def up(
    port: int | None = typer.Option(None, "--port", help="API port (default: GATEWAY_PORT, 8000)."),
    host: str | None = typer.Option(None, "--host", help="API bind address (default: GATEWAY_HOST, 127.0.0.1)."),
    no_prefect: bool = typer.Option(False, "--no-prefect", help="Celery only: no Prefect server or runner."),
) -> None:
    """Run the whole stack (API, Celery worker, Prefect server and runner) with a demo catalog; Ctrl-C stops it."""
    console = Console(stderr=False)
    settings = get_settings()
    plan_host = host or settings.gateway_host
    plan_port = port or settings.gateway_port
    cleanup = contextlib.ExitStack()
    try:
        cleanup.enter_context(_data_dir_lock(settings.data_dir))
        # Before the port checks: what a killed `gateway up` left behind may be holding those very ports.
        for leftover in stop_leftovers(settings.data_dir):
            typer.echo(f"stopped {leftover}, left running by an earlier `gateway up`", err=True)
        if not port_free(plan_host, plan_port):
            raise UpError(f"port {plan_port} on {plan_host} is already in use; pick another with --port")
        prefect_api = None if no_prefect else prefect_api_for_up(settings)
    except UpError as exc:
        cleanup.close()
        typer.echo(f"gateway up: {exc}", err=True)
        raise typer.Exit(1) from None
    plan = Plan(plan_host, plan_port, prefect_api)
    if prefect_api is not None:
        settings = settings.model_copy(update={"prefect_api_url": prefect_api})
    supervisor = Supervisor(settings.data_dir / "logs", child_env(settings, prefect_api or settings.prefect_api()))
    # SIGINT too, explicitly: a shell that started us in the background may have left it ignored.
    STOP.clear()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    code = 0
    try:
        console.print(f"data folder {settings.data_dir}; logs in {supervisor.log_dir}", soft_wrap=True)
        with StartupView(console) as view:
            demo = start_stack(plan, settings, supervisor, view)
        print_ready(plan, demo, supervisor, console)
        supervise(supervisor, console, settings.data_dir)
    except (KeyboardInterrupt, _Stop):
        pass
    except (ServiceFailedError, UpError) as exc:
        console.print(f"gateway up: {exc}", style="red", soft_wrap=True, markup=False, highlight=False)
        code = 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave children behind.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        # The terminal may be gone (SIGHUP): printing must never keep the children from being stopped.
        with contextlib.suppress(Exception):
            console.print("stopping…")
        supervisor.stop_all()
        (settings.data_dir / CHILDREN_FILE).unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            console.print("stopped")
        cleanup.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
