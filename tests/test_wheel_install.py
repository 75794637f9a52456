"""A non-editable install (what the Docker image does) finds its migrations: `gateway db upgrade` works.

The wheel is built from this checkout and installed without dependencies into a fresh virtual environment
whose only view of the dependencies is the test venv's site-packages (a plain path entry, so the editable
install's finder of this checkout is *not* loaded): the project's own code comes from the wheel alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import PostgresDB
from tests.service.conftest import fresh_pg_database

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_carries_its_migrations(tmp_path: Path, postgres_db: PostgresDB) -> None:
    wheels, source = tmp_path / "wheels", tmp_path / "source"
    # Built from a copy, so the build's own folders never land in the checkout.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)], tmp_path)
    (wheel,) = wheels.glob("ctutor_gateway-*.whl")
    venv = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    fresh_python = venv / "bin" / "python"
    site = Path(
        _run([str(fresh_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip()
    )
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(fresh_python), "install", "-q", "--no-deps", str(wheel)], tmp_path
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "GATEWAY_", "PYTHON"))}
    where = _run([str(fresh_python), "-c", "import gateway.store.migrate as m; print(m.MIGRATIONS)"], tmp_path, env)
    assert where.strip().startswith(str(site)), where  # the migrations of the installed package, not this checkout
    # The comparator's shipped rules (data, not code) travel with the package too.
    rules = "from gateway.compare.rules import SHIPPED, default_rules; default_rules(); print(SHIPPED)"
    assert _run([str(fresh_python), "-c", rules], tmp_path, env).strip().startswith(str(site))
    with fresh_pg_database(postgres_db) as db:
        env.update(db.env())
        env["GATEWAY_DATA_DIR"] = str(tmp_path / "data")
        _run([str(venv / "bin" / "gateway"), "db", "upgrade"], tmp_path, env)
        conn = psycopg2.connect(host=db.host, port=db.port, user=db.user, dbname=db.name)
        try:
            with conn.cursor() as cur:
                cur.execute("select count(*) from alembic_version")
                assert cur.fetchone() == (1,)
                cur.execute("select to_regclass('public.leg') is not null, to_regclass('public.result') is not null")
                assert cur.fetchone() == (True, True)
        finally:
            conn.close()
