"""A bare install of the wheel (what the Docker image does) runs: migrations, shipped rules, and a graded example.

The wheel is built from this checkout and installed, with its dependencies resolved by pip under
constraints.txt and no extras, into a fresh virtual environment: nothing of the test venv is on its path, so a
dependency the worker needs at run time but that only the `[test]` extra declares (pytest, which every
sandboxed run imports; `packaging`) makes `gateway example` fail here as it would in the image.
One install for the module (pip resolving the whole tree is the slow part).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import PostgresDB, service_missing
from tests.service.conftest import fresh_pg_database

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class BareInstall:
    venv: Path
    site: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def gateway(self) -> Path:
        return self.venv / "bin" / "gateway"


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _bare_env(tmp: Path) -> dict[str, str]:
    """No service variables, no PYTHONPATH, no virtualenv of the tests: what a container's process sees."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSTGRES_", "GATEWAY_", "PYTHON", "REDIS_", "CELERY_", "PREFECT_", "SANDBOX_"))
        and k != "VIRTUAL_ENV"
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix))
    env["GATEWAY_DATA_DIR"] = str(tmp / "data")
    return env


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BareInstall]:
    tmp = tmp_path_factory.mktemp("wheel")
    wheels, source = tmp / "wheels", tmp / "source"
    # Built from a copy, so the build's own folders never land in the checkout.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)], tmp)
    (wheel,) = wheels.glob("ctutor_gateway-*.whl")
    venv = tmp / "fresh"
    _run([sys.executable, "-m", "venv", str(venv)], tmp)
    fresh_python = venv / "bin" / "python"
    # As the Dockerfile does: the constraints, no extras.
    _run([str(fresh_python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)], tmp)
    site = Path(
        _run([str(fresh_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).strip()
    )
    yield BareInstall(venv, site)


def test_nothing_of_the_test_venv_is_on_the_path(bare: BareInstall, tmp_path: Path) -> None:
    paths = _run([str(bare.python), "-c", "import sys; print('\\n'.join(sys.path))"], tmp_path, _bare_env(tmp_path))
    ours = sysconfig.get_paths()["purelib"]
    assert ours not in paths.splitlines() and str(ROOT) not in paths.splitlines(), paths
    where = _run([str(bare.python), "-c", "import pytest; print(pytest.__file__)"], tmp_path, _bare_env(tmp_path))
    assert where.startswith(str(bare.site)), where


def test_a_bare_install_grades_the_example(bare: BareInstall, tmp_path: Path) -> None:
    """The default sandbox (bubblewrap) runs the bundled example: one solution passes, one fails a test."""
    if shutil.which("bwrap") is None:
        service_missing("bubblewrap is not installed (scripts/test.sh installs it as root)")
    out = _run([str(bare.gateway), "example"], tmp_path, _bare_env(tmp_path))
    assert "passing  3/3 passed  result=1.00  status=COMPLETED" in out, out
    assert "failing  2/3 passed  result=0.67  status=COMPLETED" in out, out


@pytest.mark.postgres
def test_the_wheel_carries_its_migrations(bare: BareInstall, tmp_path: Path, postgres_db: PostgresDB) -> None:
    env = _bare_env(tmp_path)
    where = _run([str(bare.python), "-c", "import gateway.store.migrate as m; print(m.MIGRATIONS)"], tmp_path, env)
    assert where.strip().startswith(str(bare.site)), where  # the migrations of the installed package, not this checkout
    # The comparator's shipped rules (data, not code) travel with the package too.
    rules = "from gateway.compare.rules import SHIPPED, default_rules; default_rules(); print(SHIPPED)"
    assert _run([str(bare.python), "-c", rules], tmp_path, env).strip().startswith(str(bare.site))
    with fresh_pg_database(postgres_db) as db:
        env.update(db.env())
        _run([str(bare.gateway), "db", "upgrade"], tmp_path, env)
        conn = psycopg2.connect(host=db.host, port=db.port, user=db.user, dbname=db.name)
        try:
            with conn.cursor() as cur:
                cur.execute("select count(*) from alembic_version")
                assert cur.fetchone() == (1,)
                cur.execute("select to_regclass('public.leg') is not null, to_regclass('public.result') is not null")
                assert cur.fetchone() == (True, True)
        finally:
            conn.close()
