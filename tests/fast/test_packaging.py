"""The wheel's package list, read from pyproject.toml: every package folder of the checkout is in it, and the
top-level `migrations/` ships whole as `gateway_migrations`.

The packages are listed by hand (setuptools' `packages.find` cannot rename `migrations/`), so a new package
folder left out of the list would install without it; this catches that in seconds. `tests/test_wheel_install.py`
builds and installs the real wheel and upgrades a database with it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]

pytestmark = pytest.mark.fast


def test_every_package_folder_is_listed() -> None:
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("gateway", "backends", "common")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert set(SETUPTOOLS["packages"]) == folders | {"gateway_migrations"}


def test_the_migrations_ship_whole_as_their_own_package() -> None:
    assert SETUPTOOLS["package-dir"] == {"gateway_migrations": "migrations"}
    folder = ROOT / "migrations"
    shipped = set(folder.glob("*.py"))  # the package's modules: env.py and __init__.py
    shipped |= {f for pattern in SETUPTOOLS["package-data"]["gateway_migrations"] for f in folder.glob(pattern)}
    on_disk = {f for f in folder.rglob("*") if f.is_file() and "__pycache__" not in f.parts}
    assert on_disk == shipped, sorted(str(f.relative_to(folder)) for f in on_disk - shipped)
    assert {"env.py", "script.py.mako"} <= {f.name for f in shipped}
    assert any(f.parent.name == "versions" for f in shipped)
