"""Starting the stack: the live progress view and the start-up loop that overlaps slow starters."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from common.settings import Settings
from gateway.devstack.errors import UpError
from gateway.devstack.leftovers import record_children
from gateway.devstack.services import Plan, service_specs
from gateway.devstack.signals import STOP, StopRequested
from gateway.devstack.supervisor import RunningService, ServiceFailedError, Supervisor

POLL_SECONDS = 0.25


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
    from gateway.devstack.demo import load_demo
    from gateway.store.catalog import CatalogError
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
    if "flower" in specs:
        launch("flower")
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
            raise StopRequested("signal")
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
