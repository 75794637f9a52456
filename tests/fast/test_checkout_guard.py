"""The suite tests this checkout's code or refuses to run (tests/conftest.py's guard).

A test package once named `tests/gateway` took the real `gateway`'s place under pytest, and a mutated checkout's
tests passed against another checkout's code. The guard checks where `gateway`, `backends` and `common` resolve,
before collection and after it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CHECKED_PACKAGES, CHECKOUT, packages_outside

pytestmark = pytest.mark.fast


def test_this_run_imports_this_checkout() -> None:
    assert packages_outside(CHECKOUT) == {}


def test_every_package_counts_as_outside_another_root(tmp_path: Path) -> None:
    assert set(packages_outside(tmp_path)) == set(CHECKED_PACKAGES)


def test_a_same_named_package_inside_the_checkout_counts_as_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old shadow lived inside the checkout (`tests/gateway`): only `<root>/<name>/` is the real package."""
    for where in (tmp_path, tmp_path / "tests"):
        (where / "guardprobe").mkdir(parents=True)
        (where / "guardprobe" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert packages_outside(tmp_path, {"guardprobe": "guardprobe"}) == {}
    monkeypatch.syspath_prepend(str(tmp_path / "tests"))
    assert packages_outside(tmp_path, {"guardprobe": "guardprobe"}) == {
        "guardprobe": str(tmp_path / "tests/guardprobe/__init__.py")
    }


def test_a_shadowing_package_stops_the_run_before_collection(tmp_path: Path) -> None:
    """A `gateway` package earlier on `sys.path` than the checkout's: pytest exits with a usage error, naming it."""
    fake = tmp_path / "gateway"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    run = (
        "import sys; sys.path.insert(0, sys.argv[1]); import pytest; "
        "raise SystemExit(pytest.main(['-q', '-p', 'no:cacheprovider', '--co', 'tests/test_architecture.py']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", run, str(tmp_path)], cwd=CHECKOUT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert f"gateway -> {fake / '__init__.py'}" in done.stdout + done.stderr
    assert "test_every_import_contract_is_kept" not in done.stdout  # nothing was collected
