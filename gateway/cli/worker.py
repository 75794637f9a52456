"""`gateway worker ...`: start the celery-system-worker, show the engines' workers, and run an example job.

`start` is the one worker command for everything: a prefork pool consuming all three queues by default, with
Celery beat embedded (the result cleanup job) unless `--no-beat`. `status` and `test-job` talk to the engines
only through `backends.registry.make_adapter`, like the gateway itself.
"""

from __future__ import annotations

import typer

from backends.celery import names

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


def register(app: typer.Typer) -> None:
    app.add_typer(worker_app, name="worker")
