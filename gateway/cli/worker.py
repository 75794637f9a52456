"""`gateway worker ...`: start the celery-system-worker, show the engines' workers, and run an example job.

`start` is the one worker command for everything: a prefork pool consuming all three queues by default, with
Celery beat embedded (the result cleanup job) unless `--no-beat`. `status` and `test-job` talk to the engines
only through `backends.registry.make_adapter`, like the gateway itself.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backends.celery import names
from backends.interface import DeploymentNotFound, EngineAdapter, JobSpec, LegPhase, TaskKind
from common.engines import Engine
from common.redact import redact_text, redact_url
from common.settings import Settings, get_settings
from gateway.cli import output

worker_app = typer.Typer(help="Celery workers: start one, show their status, run an example job.", no_args_is_help=True)

DEFAULT_HOSTNAME = "celery-system-worker@%h"


@worker_app.command("start")
def start(
    queues: str = typer.Option(",".join(names.ALL_QUEUES), "--queues", "-Q", help="Comma-separated queues."),
    concurrency: int = typer.Option(2, "--concurrency", "-c", min=1, help="Prefork pool processes."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
    hostname: str = typer.Option(DEFAULT_HOSTNAME, "--hostname", "-n"),
    beat: bool = typer.Option(True, "--beat/--no-beat", help="Embed Celery beat (the result cleanup job)."),
    include: list[str] = typer.Option([], "--include", "-I", help="Extra task modules (tests, plugins)."),
) -> None:
    """Run the celery-system-worker in the foreground (Ctrl-C for a warm shutdown)."""
    from backends.work.sandbox import sandbox_health

    refusal = sandbox_health(get_settings())
    if refusal is not None:  # a worker that cannot isolate student code must not take test runs
        Console(stderr=True).print(f"[red]this worker refuses to grade: {refusal}[/red]")
        raise typer.Exit(2)
    from backends.celery.app import app

    argv = [
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
        f"--loglevel={loglevel}",
        f"--hostname={hostname}",
    ]
    if include:
        argv.append(f"--include={','.join(include)}")
    if beat:
        argv.append("--beat")
    app.worker_main(argv=argv)


# ------------------------------------------------------------------------------------------------------- status
def _adapters(settings: Settings, console: Console) -> list[EngineAdapter]:
    """Celery always; Prefect too when its adapter exists and its API answers."""
    from backends.registry import make_adapter

    adapters = [make_adapter(Engine.CELERY, settings)]
    if settings.prefect_api_url is None:
        return adapters
    try:
        prefect = make_adapter(Engine.PREFECT, settings)
    except ImportError:
        return adapters
    if _prefect_reachable(settings):
        adapters.append(prefect)
    else:
        console.print(f"[dim]prefect: API not reachable at {redact_url(settings.prefect_api())}[/dim]")
    return adapters


def _prefect_reachable(settings: Settings) -> bool:
    import httpx

    try:
        return httpx.get(settings.prefect_api().rstrip("/") + "/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _engine_status(adapter: EngineAdapter, settings: Settings, console: Console) -> int:
    """Print one engine's tables; return how many workers answered."""
    health = adapter.health()
    where = {
        Engine.CELERY: (
            f"broker {redact_url(settings.broker_url())}, results {redact_url(settings.result_backend_url())}"
        ),
        Engine.PREFECT: f"api {redact_url(settings.prefect_api())}",
    }.get(adapter.engine, "")
    marks = {True: "[green]ok[/green]", False: "[red]unreachable[/red]"}
    checks = "  ".join(f"{name}: {marks[bool(ok)]}" for name, ok in health.checks.items())
    console.rule(f"[bold]{adapter.engine}[/bold]")
    console.print(redact_text(where))
    console.print(checks)
    if health.error:
        console.print(f"[yellow]{redact_text(health.error)}[/yellow]")
    workers = []
    try:
        workers = adapter.workers() if health.checks.get("broker", True) else []
    except Exception as exc:  # noqa: BLE001
        console.print(f"[red]workers: {redact_text(f'{type(exc).__name__}: {exc}')}[/red]")
    table = Table(title=f"{adapter.engine} workers")
    for column in ("name", "queues", "active", "uptime"):
        table.add_column(column)
    for info in workers:
        table.add_row(
            info.name, ", ".join(info.queues), str(info.active), output.duration(info.uptime_seconds, keep_seconds=True)
        )
    console.print(table)
    try:
        depths = adapter.queue_depths()
    except Exception as exc:  # noqa: BLE001
        console.print(f"[red]queues: {redact_text(f'{type(exc).__name__}: {exc}')}[/red]")
        depths = {}
    if depths:
        queues = Table(title=f"{adapter.engine} queue lengths")
        queues.add_column("queue")
        queues.add_column("waiting", justify="right")
        for queue, depth in depths.items():
            queues.add_row(queue, str(depth))
        console.print(queues)
    return len(workers)


def _sandbox_slots(settings: Settings, console: Console) -> None:
    """This machine's sandbox admission: runs in progress out of the slots (one per usable core by default)."""
    from backends.work.sandbox import sandbox_slot_usage

    try:
        usage = sandbox_slot_usage(settings)
    except OSError as exc:
        console.print(f"[red]sandbox slots: {redact_text(f'{type(exc).__name__}: {exc}')}[/red]")
        return
    console.print(f"sandbox slots on this host: {usage.in_use}/{usage.total} in use")


def _sandbox_memory_bound(settings: Settings, console: Console) -> None:
    """Which bound holds a run's total memory on this host: its own cgroup (hard) or the worker's polling."""
    from backends.work.sandbox import memory_place

    try:
        place = memory_place(settings)
    except OSError as exc:
        console.print(f"[red]sandbox memory bound: {redact_text(f'{type(exc).__name__}: {exc}')}[/red]")
        return
    budget = settings.sandbox_run_memory_mb
    console.print(f"sandbox memory bound per run ({budget} MiB): {place.describe()}")


@worker_app.command("status")
def status() -> None:
    """Workers (name, queues, active tasks, uptime), queue lengths, broker/backend reachability. Exit 1 if none."""
    console = output.console()
    settings = get_settings()
    answered = 0
    for adapter in _adapters(settings, console):
        try:
            answered += _engine_status(adapter, settings, console)
        except Exception as exc:  # noqa: BLE001 - one engine's failure must not hide the other's table
            console.print(f"[red]{adapter.engine}: {redact_text(f'{type(exc).__name__}: {exc}')}[/red]")
    _sandbox_slots(settings, console)
    _sandbox_memory_bound(settings, console)
    if answered == 0:
        console.print("[red]no worker answered[/red]")
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------------- test-job
TEST_TASKS = {kind.value: kind for kind in TaskKind}


def _example_job(kind: TaskKind, settings: Settings) -> JobSpec:
    from backends.examples import materialize_example

    repos = materialize_example(settings.data_dir / "example")
    test_job = repos.test_job("passing").model_dump(mode="json")
    if kind is TaskKind.STUDENT_TESTING:
        return JobSpec(kind, {"test_job": test_job})
    return JobSpec(kind, {"submission": {"test_job": test_job, "result_id": "example"}})


def _follow(adapter: EngineAdapter, leg_id: str, console: Console, timeout: float) -> Any:
    """A live progress bar fed by poll() until the leg is final (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("queued", total=100)
        while True:
            state = adapter.poll([leg_id])[leg_id]
            stage = (state.progress.metadata.get("stage") if state.progress else None) or state.native.lower()
            pct = state.progress.percentage if state.progress else (100 if state.phase.is_final else 0)
            bar.update(task, completed=pct, description=f"{state.phase.value} ({stage})")
            if state.phase.is_final or time.monotonic() > deadline:
                return state
            time.sleep(0.2)


def _submit_when_deployed(adapter: EngineAdapter, job: JobSpec, leg_id: str, console: Console, grace: float) -> None:
    """Submit; a deployment not there yet (the runner registers it as it starts) is waited for, visibly.

    `gateway prefect serve` registers its deployments a few seconds after it starts, so a test job sent right
    after it would fail with DeploymentNotFound; like the API (`DEPLOYMENT_GRACE`), wait within a grace period,
    then fail with a one-line hint.
    """
    deadline = time.monotonic() + grace
    try:
        adapter.submit(job, leg_id)
        return
    except DeploymentNotFound as exc:
        missing = exc.deployment
    waiting = f"waiting up to {grace:.0f}s for the Prefect deployment {missing} (a runner registers it as it starts)"
    if not console.is_terminal:
        console.print(waiting + " …")
    with console.status(waiting):
        while time.monotonic() < deadline:
            time.sleep(1.0)  # the poll interval of a bounded wait for the deployment
            try:
                adapter.submit(job, leg_id)
                return
            except DeploymentNotFound:
                continue
    typer.echo(
        f"deployment {missing} not found after {grace:.0f}s: start the runner with `gateway prefect serve` "
        f"against {redact_url(get_settings().prefect_api())} (`gateway worker status` lists the deployments)",
        err=True,
    )
    raise typer.Exit(1)


def _summary(report: dict[str, Any] | None) -> str:
    if not report:
        return "-"
    summary = report.get("summary")
    if isinstance(summary, dict):
        return ", ".join(f"{key}={summary.get(key)}" for key in ("total", "passed", "failed", "skipped"))
    return json.dumps(report)[:300]


@worker_app.command("test-job")
def test_job(
    task: str = typer.Option("student_testing", "--task", help=f"One of: {', '.join(TEST_TASKS)}."),
    backend: str = typer.Option(Engine.CELERY.value, "--backend", help="celery or prefect."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end and print the result."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait with --wait."),
    deployment: str | None = typer.Option(None, "--deployment", help="Prefect: `flow/deployment` to run instead."),
    grace: float = typer.Option(
        60.0, "--grace", help="Prefect: seconds to wait for the deployment to appear (a runner just started)."
    ),
) -> None:
    """Submit the bundled example assignment through the engine's adapter (the gateway's own path)."""
    console = output.console()
    if task not in TEST_TASKS:
        console.print(f"[red]unknown task {task!r}; valid tasks: {', '.join(TEST_TASKS)}[/red]")
        raise typer.Exit(2)
    from backends.registry import UnknownEngineError, make_adapter

    settings = get_settings()
    try:
        adapter = make_adapter(backend, settings)
    except UnknownEngineError as exc:
        console.print(f"[red]{exc}; valid backends: celery, prefect[/red]")
        raise typer.Exit(2) from None
    kind = TEST_TASKS[task]
    leg_id = str(uuid.uuid4())
    job = _example_job(kind, settings)
    if deployment:
        job = JobSpec(job.kind, job.params, {"deployment": deployment})
    _submit_when_deployed(adapter, job, leg_id, console, grace)
    if not wait:
        console.print(leg_id)
        return
    state = _follow(adapter, leg_id, console, timeout)
    result = adapter.result(leg_id)
    console.print(f"task id: {leg_id}")
    console.print(f"state:   {state.phase.value} ({state.native}), worker {state.worker or '-'}")
    if result.error:
        console.print(f"error:   {redact_text(result.error)}")
    console.print(f"summary: {_summary(result.report)}")
    row_of = getattr(adapter, "taskmeta_row", None)
    if callable(row_of):
        row = row_of(leg_id)
        if row is not None:
            row = {**row, "result": "<report>" if row.get("result") else None}
            console.print("celery_taskmeta row:")
            console.print_json(redact_text(json.dumps(row, default=str)))
    if state.phase is not LegPhase.SUCCEEDED:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(worker_app, name="worker")
