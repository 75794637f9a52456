"""`gateway prefect serve` (the runner for the deployments) and `gateway prefect server` (a real Prefect server).

Prefect is imported only inside the commands: `gateway --help` and every other command stay fast.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import typer

from common.redact import redact_url
from common.settings import Settings, get_settings

prefect_app = typer.Typer(help="The Prefect engine: serve the legacy deployments, or run a Prefect server.")


@prefect_app.command("serve")
def serve(
    limit: int = typer.Option(4, help="Flow runs executed at once by this runner."),
    poll_seconds: float = typer.Option(1.0, help="Seconds between polls for scheduled runs (Prefect's default: 10)."),
    test_flows: bool = typer.Option(False, "--test-flows", help="Also serve the test/benchmark flows."),
    deployment_name: str = typer.Option("system", help="Deployment name for every served flow."),
) -> None:
    """Serve test-assignment/system and submit-result/system against PREFECT_API_URL."""
    from backends.prefect.serve import serve_deployments

    settings = get_settings()
    typer.echo(f"serving Prefect deployments against {redact_url(settings.prefect_api())} (limit {limit})")
    serve_deployments(
        limit=limit,
        poll_seconds=poll_seconds,
        test_flows=test_flows,
        settings=settings,
        deployment_name=deployment_name,
    )


def server_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for `prefect server start`: its own home and database under the data folder by default.

    An explicit `PREFECT_SERVER_DATABASE_CONNECTION_URL` (PostgreSQL in production) is kept as given.
    """
    env = dict(os.environ if base is None else base)
    api = urlsplit(settings.prefect_api())
    home = settings.data_dir / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    env["PREFECT_API_URL"] = settings.prefect_api()
    env.setdefault("PREFECT_HOME", str(home))
    env.setdefault(
        "PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{settings.data_dir / 'prefect.sqlite'}"
    )
    env.setdefault("PREFECT_SERVER_API_HOST", api.hostname or "127.0.0.1")
    env.setdefault("PREFECT_SERVER_API_PORT", str(api.port or 4200))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if settings.prefect_api_auth_string is not None:
        # The server checks the string its clients send (Prefect names the two settings differently).
        env.setdefault("PREFECT_SERVER_API_AUTH_STRING", settings.prefect_api_auth_string.get_secret_value())
    return env


@prefect_app.command("server")
def server(
    ui: bool = typer.Option(False, "--ui/--no-ui", help="Serve Prefect's dashboard too."),
) -> None:
    """Start `prefect server start` (replaces this process) on the host and port of PREFECT_API_URL."""
    settings = get_settings()
    env = server_env(settings)
    env["PREFECT_SERVER_UI_ENABLED"] = "true" if ui else "false"
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    typer.echo(
        f"prefect server at {settings.prefect_api()}, "
        f"database {redact_url(env['PREFECT_SERVER_DATABASE_CONNECTION_URL'])}"
    )
    args = [prefect, "server", "start", "--host", env["PREFECT_SERVER_API_HOST"]]
    args += ["--port", env["PREFECT_SERVER_API_PORT"]]
    os.execve(prefect, args, env)


def register(app: typer.Typer) -> None:
    app.add_typer(prefect_app, name="prefect")
