"""The layers are data (`[tool.importlinter]` in pyproject.toml); this test fails when a contract is broken.

It catches the service importing the dev stack or an engine's internals, `common` importing either side, and
a new import cycle among the gateway's modules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.fast


def test_every_import_contract_is_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout  # the contracts were read and checked, not skipped
