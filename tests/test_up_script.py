"""`scripts/up.sh` on a machine without bubblewrap: it installs it where it can, otherwise stops with one line.

A stack that starts but cannot grade (the worker refuses without its sandbox) looks ready and is not; the script
must say what to run instead. The machine here may have bubblewrap and root: the test gives the script a PATH
with only the few tools it uses, so `bwrap` and `apt-get` are absent and installing is impossible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
# What up.sh and scripts/lib.sh's ensure_venv call before the sandbox check.
TOOLS = ("bash", "cat", "sha256sum", "cut", "id", "dirname")


def _bare_path(tmp_path: Path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, f"{tool} is needed to run scripts/up.sh"
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


@pytest.mark.skipif(not (ROOT / ".venv" / ".installed").exists(), reason="needs the repo's .venv (scripts/lib.sh)")
def test_up_without_bubblewrap_stops_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SANDBOX_ISOLATION"}
    env["PATH"] = _bare_path(tmp_path)
    env["GATEWAY_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [shutil.which("bash") or "bash", str(ROOT / "scripts" / "up.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bubblewrap" in lines[0] and "apt-get install -y bubblewrap" in lines[0], lines
    assert not (tmp_path / "data").exists(), "nothing was started"


def test_test_and_up_share_one_install() -> None:
    """Both scripts install bubblewrap through scripts/lib.sh's `ensure_bwrap`, not copies of it."""
    for script in ("up.sh", "test.sh"):
        assert "ensure_bwrap" in (ROOT / "scripts" / script).read_text(), script
