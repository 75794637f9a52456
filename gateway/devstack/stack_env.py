"""The running stack's settings for a second shell: `gateway up` writes them, `gateway env` prints them.

A second terminal (to run `gateway shadow ...`, `prefect flow-run ls`, a curl) must talk to the same stack: the
same data folder, Prefect API and ports. `gateway up` writes them as shell `export` lines to `<data>/stack.env`
once it has chosen them (ports may be free ones it picked), before any child starts, and removes the file when
it stops; `eval "$(gateway env)"` (or `source <data>/stack.env`) then sets them in the other shell.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

STACK_ENV_FILE = "stack.env"

# What a second shell needs, in the order printed. Every one is a variable the settings (or Prefect) read.
STACK_VARIABLES = (
    "GATEWAY_DATA_DIR",
    "GATEWAY_HOST",
    "GATEWAY_PORT",
    "GATEWAY_URL",
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "PREFECT_API_AUTH_STRING",
    "FLOWER_URL",
)


class NoStackError(Exception):
    """No `gateway up` runs on this data folder (its settings file is absent)."""


def render(values: Mapping[str, str | None]) -> str:
    """`export NAME=value` lines (shell-quoted), only for the variables that have a value."""
    lines = [f"export {name}={shlex.quote(values[name])}" for name in STACK_VARIABLES if values.get(name)]
    return "\n".join(lines) + "\n"


def write_stack_env(data_dir: Path, values: Mapping[str, str | None]) -> Path:
    """Write the settings file atomically (a reader never sees half of it), readable by its owner only: it may
    hold the Prefect API's auth string."""
    path = data_dir / STACK_ENV_FILE
    tmp = data_dir / f"{STACK_ENV_FILE}.tmp"
    tmp.write_text(render(values))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def read_stack_env(data_dir: Path) -> str:
    path = data_dir / STACK_ENV_FILE
    try:
        return path.read_text()
    except FileNotFoundError:
        raise NoStackError(f"no `gateway up` is running on {data_dir} (no {STACK_ENV_FILE} there)") from None


def remove_stack_env(data_dir: Path) -> None:
    (data_dir / STACK_ENV_FILE).unlink(missing_ok=True)
