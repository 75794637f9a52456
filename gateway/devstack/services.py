"""What `gateway up` starts: the children's command lines, their one shared environment, and the plan."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from common.settings import Settings
from gateway.devstack.flower import FlowerLogin, flower_spec, flower_url
from gateway.devstack.probes import RunnerPolled, api_healthy, celery_workers_up, prefect_server_healthy
from gateway.devstack.supervisor import ServiceSpec, Supervisor


def gateway_argv() -> list[str]:
    """How to run this same `gateway` command (the venv's script, else this interpreter)."""
    script = shutil.which("gateway", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-c", "from gateway.cli import main; main()"]


def child_env(settings: Settings, prefect_api: str) -> dict[str, str]:
    """The one environment every child gets: same data folder, same Prefect API and its auth string (the
    server checks it, every client sends it), Prefect's home under data."""
    env = dict(os.environ)
    env["GATEWAY_DATA_DIR"] = str(settings.data_dir)
    env["PREFECT_API_URL"] = prefect_api
    if settings.prefect_api_auth_string is not None:
        auth = settings.prefect_api_auth_string.get_secret_value()
        env["PREFECT_API_AUTH_STRING"] = env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    env["PREFECT_HOME"] = str(settings.data_dir / "prefect-home")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# Flow runs the Prefect runner of `gateway up` executes at once (`--runner-limit`; `gateway prefect serve --limit`).
RUNNER_LIMIT = 4


@dataclass(frozen=True)
class Plan:
    """What to start and where."""

    host: str
    port: int
    prefect_api: str | None
    # Flower's port and login; None: no Flower (`--no-flower`).
    flower_port: int | None = None
    flower_login: FlowerLogin | None = None
    runner_limit: int = RUNNER_LIMIT

    @property
    def base_url(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104 - only for display
        return f"http://{shown}:{self.port}"

    @property
    def flower_url(self) -> str | None:
        return None if self.flower_port is None else flower_url(self.host, self.flower_port)


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
    if plan.flower_port is not None and plan.flower_login is not None:
        specs["flower"] = flower_spec(plan.host, plan.flower_port, plan.flower_login)
    if plan.prefect_api is not None:
        api = plan.prefect_api

        def runner_pid() -> int:
            found = [s.process.pid for s in supervisor.services if s.spec.name == "prefect-runner"]
            return found[0] if found else -1

        from gateway.devstack.demo import PREFECT_DEPLOYMENT

        specs["prefect-server"] = ServiceSpec(
            "prefect-server", [*gw, "prefect", "server"], lambda: prefect_server_healthy(api), start_timeout=240
        )
        specs["prefect-runner"] = ServiceSpec(
            "prefect-runner",
            [*gw, "prefect", "serve", "--limit", str(plan.runner_limit)],
            RunnerPolled(api, PREFECT_DEPLOYMENT, runner_pid, settings.prefect_api_headers()),
            start_timeout=180,
        )
    return specs
