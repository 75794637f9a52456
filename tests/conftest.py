"""Shared fixtures: real PostgreSQL and Redis, isolated settings, and git repositories made in a temp dir.

- `postgres_db`: a fresh database per test session on the local server, dropped at the end.
- `redis_db`: a Redis database number held exclusively by this session (a lock key in db 0), flushed before
  and after, so two test runs on one machine never consume each other's Celery messages.
- `isolated_env`: the settings read from a clean environment with a temp data folder (the embedded default).
- `git_repo`: a factory for real repositories with real commits.
Tests that need a service that is not running skip with a one-line reason, and fail under CI (`CI=true`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.settings import get_settings
from tests.support.parallel import pytest_collection_modifyitems as pytest_collection_modifyitems  # hooks of
from tests.support.parallel import pytest_xdist_make_scheduler as pytest_xdist_make_scheduler  # the -n runs

# The checkout under test: its packages must be imported from here, never from another checkout or an installed
# copy (a test passing against other code proves nothing about this code). Package name → its folder.
CHECKOUT = Path(__file__).resolve().parents[1]
CHECKED_PACKAGES = {
    "gateway": "gateway",
    "backends": "backends",
    "common": "common",
    "gateway_migrations": "migrations",
}


def packages_outside(root: Path, packages: dict[str, str] = CHECKED_PACKAGES) -> dict[str, str]:
    """The packages that do not resolve to their folder under `root` (name → where they resolved instead).

    Inside the checkout is not enough: the old `tests/gateway` test package was inside it too.
    Asked through `importlib.util.find_spec`: an imported package answers with where it was imported from, one
    not imported yet with where the next import would find it, without importing it. A package that cannot be
    found at all is reported too (a venv installed before the package existed: re-run `ensure_venv`)."""
    outside: dict[str, str] = {}
    for name, folder in packages.items():
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is None:
            outside[name] = "not found (re-install: `source scripts/lib.sh && ensure_venv`)"
        elif Path(origin).resolve().parent != root / folder:
            outside[name] = origin
    return outside


def _require_this_checkout() -> None:
    outside = packages_outside(CHECKOUT)
    if outside:
        where = ", ".join(f"{name} -> {origin}" for name, origin in sorted(outside.items()))
        pytest.exit(f"the packages under test are not the checkout's own ({CHECKOUT}): {where}", returncode=4)


def pytest_configure(config: pytest.Config) -> None:
    """Stop the run before it collects anything when the code under test is not this checkout's."""
    _require_this_checkout()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Again once the test modules are imported: a test package named like a real one (the old `tests/gateway`)
    would have taken the real one's name in `sys.modules` while they were collected."""
    _require_this_checkout()


PG_HOST = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_POSTGRES_PORT", "5432"))
PG_USER = os.environ.get("TEST_POSTGRES_USER", "postgres")
REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TEST_REDIS_PORT", "6379"))

# Every service variable the settings read: cleared so a developer's shell never leaks into a test.
SERVICE_VARS = (
    "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB",
    "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB",
    "PREFECT_API_URL", "GATEWAY_DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
    "GATEWAY_DATA_DIR",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------- PostgreSQL
def service_missing(reason: str) -> None:
    """A service a test needs is not there: skip with the reason, but fail under CI (`CI=true`), never quietly."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and a required service is missing: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class PostgresDB:
    host: str
    port: int
    user: str
    name: str

    def url(self, driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{self.name}"

    def env(self) -> dict[str, str]:
        """The variables that point the settings object at this database."""
        return {
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_DB": self.name,
        }


def _pg_admin_connect():  # type: ignore[no-untyped-def]
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[PostgresDB]:
    try:
        admin = _pg_admin_connect()
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "no server here"
        service_missing(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT} ({type(exc).__name__})")
    name = f"gwtest_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PostgresDB(PG_HOST, PG_PORT, PG_USER, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# -------------------------------------------------------------------------------------------------------- Redis
@dataclass(frozen=True)
class RedisDB:
    host: str
    port: int
    db: int

    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def env(self) -> dict[str, str]:
        return {"REDIS_HOST": self.host, "REDIS_PORT": str(self.port), "REDIS_DB": str(self.db)}


@pytest.fixture(scope="session")
def redis_db() -> Iterator[RedisDB]:
    import redis

    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_connect_timeout=3)
    try:
        admin.ping()
    except Exception as exc:  # noqa: BLE001
        service_missing(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT} ({type(exc).__name__})")
    token = uuid.uuid4().hex
    chosen = None
    for number in range(1, 16):
        if admin.set(f"gateway-tests:lock:{number}", token, nx=True, ex=3 * 3600):
            chosen = number
            break
    if chosen is None:
        service_missing("every Redis database 1-15 is held by another test run")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=chosen)
    client.flushdb()
    try:
        yield RedisDB(REDIS_HOST, REDIS_PORT, chosen)
    finally:
        client.flushdb()
        if admin.get(f"gateway-tests:lock:{chosen}") == token.encode():
            admin.delete(f"gateway-tests:lock:{chosen}")


# ----------------------------------------------------------------------------------------------------- settings
@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A clean environment: no service variables, a temp data folder. Yields the data folder."""
    for var in SERVICE_VARS:
        monkeypatch.delenv(var, raising=False)
    data = tmp_path / "gateway-data"
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(data))
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


# ------------------------------------------------------------------------------------------------------------ git
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def run_git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **GIT_ENV}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


@dataclass
class GitRepo:
    """A real repository on disk; `commit(files)` writes files and returns the new commit's SHA."""

    path: Path

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for rel, content in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        run_git("add", "-A", cwd=self.path)
        run_git("commit", "-q", "--allow-empty", "-m", message, cwd=self.path)
        return run_git("rev-parse", "HEAD", cwd=self.path)


class GitRepoFactory:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, name: str | None = None, files: dict[str, str] | None = None) -> GitRepo:
        path = self.root / (name or f"repo-{uuid.uuid4().hex[:8]}")
        path.mkdir(parents=True)
        run_git("init", "-q", "-b", "main", cwd=path)
        repo = GitRepo(path)
        if files:
            repo.commit(files, "initial")
        return repo


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepoFactory:
    return GitRepoFactory(tmp_path / "repos")
