"""`gateway serve`, `gateway reconcile`, `gateway db upgrade`, `gateway catalog load`, `gateway user add`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

import typer

from common.logs import configure_json_logging, wants_json
from common.redact import redact_url
from common.settings import get_settings
from gateway.schemas import Role

db_app = typer.Typer(help="The gateway's database.", no_args_is_help=True)
catalog_app = typer.Typer(help="The course catalog the dispatcher routes by.", no_args_is_help=True)
user_app = typer.Typer(help="Logins (HTTP Basic).", no_args_is_help=True)


def serve(
    host: str | None = typer.Option(None, help="Bind address (default: GATEWAY_HOST)."),
    port: int | None = typer.Option(None, help="Port (default: GATEWAY_PORT)."),
    no_reconciler: bool = typer.Option(False, "--no-reconciler", help="Run the reconciler elsewhere."),
) -> None:
    """Run only the API (production). The schema must be at head unless on the embedded default."""
    import uvicorn

    from gateway.api.app import create_app
    from gateway.store.migrate import SchemaOutOfDate, ensure_schema

    settings = get_settings()
    if no_reconciler:
        settings = settings.model_copy(update={"gateway_reconcile_in_api": False})
    try:
        ensure_schema(settings)
    except SchemaOutOfDate as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    structured = wants_json(settings.gateway_log_format, sys.stderr)
    if structured:
        configure_json_logging()
    uvicorn.run(
        create_app(settings),
        host=host or settings.gateway_host,
        port=port or settings.gateway_port,
        log_level="info",
        access_log=False,
        # With JSON logs, uvicorn keeps its hands off logging: its lines go through the root JSON handler too.
        log_config=None if structured else uvicorn.config.LOGGING_CONFIG,
    )


def reconcile(
    once: bool = typer.Option(False, help="One tick, then exit."),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="Serve this process's Prometheus counters on this port (/metrics)."
    ),
) -> None:
    """Run the reconciler on its own (several may run at once on PostgreSQL); it also enforces retention."""
    from gateway.jobs.bootstrap import freeze_startup_heap, start_gateway
    from gateway.store.migrate import SchemaOutOfDate, ensure_schema

    settings = get_settings()
    if wants_json(settings.gateway_log_format, sys.stderr):
        configure_json_logging()
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ensure_schema(settings)
    except SchemaOutOfDate as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)

    async def main() -> None:
        state = start_gateway(settings)
        freeze_startup_heap()
        try:
            if once:
                report = await state.reconciler.tick()
                typer.echo(f"dispatched={report.dispatched} deferred={report.deferred} polled={report.polled}")
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            await state.reconciler.run(stop)
        finally:
            await state.close()

    asyncio.run(main())


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the migrations."""
    from gateway.store.migrate import upgrade

    settings = get_settings()
    upgrade(settings, revision)
    typer.echo(f"database {redact_url(settings.database_url())} is at {revision}")


@db_app.command("prune")
def db_prune(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be deleted."),
    older_than_days: float | None = typer.Option(
        None, "--older-than-days", help="Retention in days (default: GATEWAY_RETENTION_DAYS)."
    ),
) -> None:
    """Delete finished legs that ended longer ago than the retention period (never a legacy result row)."""
    from datetime import timedelta

    from gateway.store import retention
    from gateway.store.db import make_async_engine, make_sessionmaker
    from gateway.store.models import utcnow

    settings = get_settings()
    days = older_than_days if older_than_days is not None else settings.gateway_retention_days
    if days is None:
        typer.echo("no retention set: give --older-than-days or set GATEWAY_RETENTION_DAYS", err=True)
        raise typer.Exit(2)
    cutoff = utcnow() - timedelta(days=days)

    async def main() -> int:
        engine = make_async_engine(settings)
        try:
            sessions = make_sessionmaker(engine)
            if dry_run:
                return await retention.count_prunable(sessions, cutoff)
            return await retention.prune(sessions, cutoff, settings.gateway_retention_batch)
        finally:
            await engine.dispose()

    count = asyncio.run(main())
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {count} finished legs that ended before {cutoff.isoformat(timespec='seconds')}")


@catalog_app.command("load")
def catalog_load(file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True)) -> None:
    """Load (upsert) a whole catalog from YAML."""
    from gateway.store.catalog import CatalogError, load_catalog

    try:
        counts = load_catalog(file)
    except (CatalogError, ValueError) as exc:
        typer.echo(f"catalog not loaded: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(", ".join(f"{n} {kind}" for kind, n in counts.items()))


@catalog_app.command("check")
def catalog_check(file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True)) -> None:
    """Check a catalog file without loading it: one line per problem; exit 1 if any is an error."""
    from gateway.store.catalog_check import check_catalog, errors, read_catalog_file

    try:
        problems = check_catalog(read_catalog_file(file))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for problem in problems:
        typer.echo(str(problem), err=True)
    found = errors(problems)
    if found:
        typer.echo(f"{file}: {len(found)} error(s); not loadable", err=True)
        raise typer.Exit(1)
    notes = len(problems)
    typer.echo(f"{file}: ok" + (f" ({notes} note(s))" if notes else ""))


@user_app.command("add")
def user_add(
    username: str,
    role: str = typer.Option(Role.STUDENT.value, help=", ".join(Role) + "."),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
    member: list[str] = typer.Option([], "--member", help="A course member id (students; repeatable)."),
) -> None:
    """Create or update a login."""
    from gateway.store.catalog import add_user

    try:
        add_user(username, password, role, list(member))
    except ValueError as exc:
        typer.echo(f"user not added: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"user {username} ({role}) saved")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("reconcile")(reconcile)
    app.add_typer(db_app, name="db")
    app.add_typer(catalog_app, name="catalog")
    app.add_typer(user_app, name="user")
