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
import secrets
import signal

import typer
from pydantic import SecretStr
from rich.console import Console

from common.settings import get_settings
from gateway.devstack.errors import UpError
from gateway.devstack.flower import flower_login
from gateway.devstack.leftovers import CHILDREN_FILE, stop_leftovers
from gateway.devstack.ports import flower_port_for_up, port_free, prefect_api_for_up
from gateway.devstack.report import print_ready
from gateway.devstack.services import RUNNER_LIMIT, Plan, child_env
from gateway.devstack.signals import STOP, StopRequested, data_dir_lock, raise_stop, supervise
from gateway.devstack.stack_env import NoStackError, read_stack_env, remove_stack_env, write_stack_env
from gateway.devstack.startup import StartupView, start_stack
from gateway.devstack.supervisor import ServiceFailedError, Supervisor


def up(
    port: int | None = typer.Option(None, "--port", help="API port (default: GATEWAY_PORT, 8000)."),
    host: str | None = typer.Option(None, "--host", help="API bind address (default: GATEWAY_HOST, 127.0.0.1)."),
    no_prefect: bool = typer.Option(False, "--no-prefect", help="Celery only: no Prefect server or runner."),
    flower: bool = typer.Option(True, "--flower/--no-flower", help="Flower (Celery's dashboard), behind basic auth."),
    flower_port: int | None = typer.Option(None, "--flower-port", help="Flower port (default 5555 or a free one)."),
    runner_limit: int = typer.Option(
        RUNNER_LIMIT, "--runner-limit", min=1, help="Flow runs the Prefect runner executes at once."
    ),
) -> None:
    """Run the whole stack (API, Celery worker, Prefect server and runner) with a demo catalog; Ctrl-C stops it."""
    console = Console(stderr=False)
    settings = get_settings()
    plan_host = host or settings.gateway_host
    plan_port = port or settings.gateway_port
    cleanup = contextlib.ExitStack()
    try:
        cleanup.enter_context(data_dir_lock(settings.data_dir))
        # Before the port checks: what a killed `gateway up` left behind may be holding those very ports.
        for leftover in stop_leftovers(settings.data_dir):
            typer.echo(f"stopped {leftover}, left running by an earlier `gateway up`", err=True)
        if not port_free(plan_host, plan_port):
            raise UpError(f"port {plan_port} on {plan_host} is already in use; pick another with --port")
        prefect_api = None if no_prefect else prefect_api_for_up(settings)
        chosen_flower_port = flower_port_for_up(plan_host, flower_port) if flower else None
    except UpError as exc:
        cleanup.close()
        typer.echo(f"gateway up: {exc}", err=True)
        raise typer.Exit(1) from None
    login = flower_login(settings) if chosen_flower_port is not None else None
    # The Prefect server accepts only the stack's own processes: PREFECT_API_AUTH_STRING as given, else a new one.
    auth = settings.prefect_api_auth_string or SecretStr(f"gateway:{secrets.token_urlsafe(24)}")
    plan = Plan(plan_host, plan_port, prefect_api, chosen_flower_port, login, runner_limit)
    if prefect_api is not None:
        settings = settings.model_copy(update={"prefect_api_url": prefect_api, "prefect_api_auth_string": auth})
    env = child_env(settings, prefect_api or settings.prefect_api())
    supervisor = Supervisor(settings.data_dir / "logs", env)
    write_stack_env(settings.data_dir, stack_values(plan, env))
    # SIGINT too, explicitly: a shell that started us in the background may have left it ignored.
    STOP.clear()
    previous = {sig: signal.signal(sig, raise_stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    code = 0
    try:
        console.print(f"data folder {settings.data_dir}; logs in {supervisor.log_dir}", soft_wrap=True)
        with StartupView(console) as view:
            demo = start_stack(plan, settings, supervisor, view)
        print_ready(plan, demo, supervisor, console)
        supervise(supervisor, console, settings.data_dir)
    except (KeyboardInterrupt, StopRequested):
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
        remove_stack_env(settings.data_dir)
        with contextlib.suppress(Exception):
            console.print("stopped")
        cleanup.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code:
        raise typer.Exit(code)


def stack_values(plan: Plan, env: dict[str, str]) -> dict[str, str | None]:
    """What a second shell needs to reach this stack (`gateway env`)."""
    return {
        "GATEWAY_DATA_DIR": env["GATEWAY_DATA_DIR"],
        "GATEWAY_HOST": plan.host,
        "GATEWAY_PORT": str(plan.port),
        "GATEWAY_URL": plan.base_url,
        "PREFECT_API_URL": plan.prefect_api,
        "PREFECT_HOME": env["PREFECT_HOME"] if plan.prefect_api else None,
        "PREFECT_API_AUTH_STRING": env.get("PREFECT_API_AUTH_STRING") if plan.prefect_api else None,
        "FLOWER_URL": plan.flower_url,
    }


def env_command() -> None:
    """Print the running `gateway up`'s settings as shell exports: `eval "$(gateway env)"` in a second shell."""
    try:
        typer.echo(read_stack_env(get_settings().data_dir), nl=False)
    except NoStackError as exc:
        typer.echo(f"gateway env: {exc}", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("env")(env_command)
