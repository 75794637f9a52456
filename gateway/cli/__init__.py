"""The `gateway` command. Each sub-module registers its own commands, one concept per module."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="gateway",
    help="Prefect ⇄ Celery migration gateway for course test jobs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Each module defines `register(app)`; the order is the order of `gateway --help`.
_COMMAND_MODULES = ("run_tests", "worker", "prefect_cmd", "server", "up", "shadow_cmd", "cutover_cmd")


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"gateway.cli.{name}")
        module.register(app)


_register_all()


def main() -> None:
    app()
