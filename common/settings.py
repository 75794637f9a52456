"""The one settings object, read from the environment.

Both the gateway and the engine workers read their configuration from here, so a Celery worker, a Prefect
runner and the API process started with the same environment agree on every URL. With no service variable
set, every URL falls back to an *embedded default* under one data folder: SQLite files and Celery's
`filesystem://` broker, so a fresh machine needs no server to run the whole stack.

Passwords are `SecretStr`; URLs that carry one are built on demand and only ever shown through
`common.redact.redact_url`.
"""

from __future__ import annotations

import base64
import os
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.engines import Engine


class SandboxIsolation(StrEnum):
    """How the sandbox isolates a run (see `Settings.sandbox_isolation`)."""

    BWRAP = "bwrap"
    NONE = "none"


class SandboxRunner(StrEnum):
    """How a run's process starts (see `Settings.sandbox_runner`)."""

    WARM = "warm"
    COLD = "cold"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ctutor-gateway"


class Settings(BaseSettings):
    """Environment-driven configuration. Field names map to upper-case variables (`redis_host` ← `REDIS_HOST`)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # --- shared services (production) -------------------------------------------------------------------
    redis_host: str | None = None
    redis_port: int = 6379
    redis_password: SecretStr | None = None
    redis_db: int = 0

    postgres_host: str | None = None
    postgres_port: int = 5432
    postgres_user: str = "postgres"
    postgres_password: SecretStr | None = None
    postgres_db: str = "postgres"

    prefect_api_url: str | None = None
    # A flow run a runner claimed (PENDING: "Submitting", "Pending") but did not start for this long is lost: its
    # runner died with it (issue 24); the gateway schedules the same run again for a live runner.
    prefect_pending_lost_seconds: float = 120.0
    # Prefect 3's basic auth (`PREFECT_API_AUTH_STRING`, the client's name; the server checks
    # `PREFECT_SERVER_API_AUTH_STRING`): sent by every gateway process that calls the Prefect API. `gateway up`
    # and compose turn it on; unset, requests go without it (a server without auth).
    prefect_api_auth_string: SecretStr | None = None

    # --- embedded default ---------------------------------------------------------------------------------
    gateway_data_dir: Path = Field(default_factory=_default_data_dir)

    # Explicit overrides win over the derived URLs (e.g. a managed database with its own URL).
    gateway_database_url: SecretStr | None = None
    celery_broker_url: SecretStr | None = None
    celery_result_backend: SecretStr | None = None

    # --- Celery reliability --------------------------------------------------------------------------------
    task_soft_time_limit: int = 600
    task_time_limit: int = 660
    result_expires_seconds: int = 7 * 24 * 3600
    # Redis redelivers an unacknowledged task after this many seconds; None = derived from the hard time limit
    # (it must stay above it, or a long task runs twice). Tests set a short one to prove redelivery.
    celery_visibility_timeout: int | None = None
    # A worker holding a running leg that answers no ping for this long is declared gone, and the gateway runs
    # the leg again at once instead of waiting for the visibility timeout (see docs/reliability.md).
    celery_worker_lost_seconds: float = 15.0
    # A leg that no answering worker holds and no queue holds (a worker restarted under the same name, a task
    # cancelled on a broker connection loss, a lost message) for this long is run again (backends/celery/liveness.py).
    celery_unheld_lost_seconds: float = 10.0
    # A task stores its progress at most this often (seconds); reports in between are folded into the latest
    # (`backends.celery.progress`). 0 stores every report.
    celery_progress_interval: float = 0.25

    # --- the work: checkout and sandbox ---------------------------------------------------------------------
    allowed_git_schemes: list[str] = Field(default_factory=lambda: ["https", "http", "ssh", "file", "local"])
    secrets_file: Path | None = None
    # CA bundle git trusts for https remotes (a course's own GitLab behind a private CA); git's default if unset.
    git_ssl_ca_file: Path | None = None
    secret_env_prefix: str = "GATEWAY_SECRET_"
    # The time limit of a run's tests when meta.yaml names none (`executionTimeLimit`), enforced as the CPU time
    # of the test process from the session's start (`sandbox_clock`): a function of the submission, not of the
    # machine's load. `sandbox_cpu_seconds` caps it (a course's long limit never buys more CPU than this).
    sandbox_timeout_seconds: float = 60
    sandbox_cpu_seconds: float = 60
    # The measurement tolerance of the CPU clock: a run is cut (TIMEDOUT) only past the limit × (1 + this). CPU
    # time is not load-invariant: beside other busy processes the same computation costs more of it (caches,
    # the host's hyper-thread siblings, frequency); measured here up to ~1.5× (docs/work.md, "Limits"). 0 = the
    # limit exactly.
    sandbox_cpu_tolerance: float = 0.5
    # The wall clock, from the session's start, is limited to the time limit times this factor (at least the
    # time limit plus `sandbox_wall_min_extra_seconds`): generous, it catches what CPU time cannot (a sleep, a
    # deadlock, a wait on input), never a computation slowed by the machine's load.
    sandbox_wall_factor: float = 3.0
    sandbox_wall_min_extra_seconds: float = 2.0
    # From the sandbox's start to the pytest session's start (bwrap, interpreter, pytest's imports, the
    # reference's conftest): past this the run is an infrastructure error (re-run), not a student's TIMEDOUT.
    sandbox_startup_seconds: float = 120
    # How many sandboxes run at once on this machine (all workers together, counted with `flock`ed slot files
    # under the sandbox root); a run waits for a free slot rather than oversubscribing the cores. 0 = the CPUs
    # this process may run on (`os.sched_getaffinity`).
    sandbox_slots: int = 0
    sandbox_memory_mb: int = 1024
    sandbox_max_processes: int = 256
    sandbox_max_file_mb: int = 64
    # All of a run's processes together: the limit of the run's own memory cgroup where the worker can make one
    # (`sandbox_cgroup.py`, a hard bound), else watched by the worker (`sandbox_memory.py`, polled);
    # `sandbox_memory_mb` is per process (RLIMIT_AS), `sandbox_max_processes` counts processes and threads.
    sandbox_run_memory_mb: int = 2048
    # The cgroup dir under which each run gets its own cgroup (a v2 cgroup with the memory controller and no
    # processes of its own, or a v1 memory cgroup); unset = the worker's own cgroup. Not a writable memory
    # cgroup (or the worker is not root): the polled bound is kept (`gateway worker status` says which).
    sandbox_cgroup_root: Path | None = None
    # Each run's writable space (its work dir and /out) is a tmpfs of this size when the worker is root
    # (`backends/work/sandbox_space.py`): filling it fails only that run. It lives in memory (docs/work.md).
    sandbox_disk_mb: int = 256
    sandbox_output_cap_bytes: int = 64 * 1024
    submissions_repo_url: str | None = None
    # How student code is kept away from the worker (docs/work.md): "bwrap" = bubblewrap namespaces (no network,
    # own mount view and pid namespace); the worker refuses to grade when that does not work. "none" = limits and
    # a uid only, for machines without bubblewrap; never for untrusted code.
    sandbox_isolation: SandboxIsolation = SandboxIsolation.BWRAP
    # As root, every run gets its own uid from [base, base + count), locked while the run lives, so runs cannot
    # signal, read or out-fork each other (Linux does not enforce RLIMIT_NPROC for root).
    sandbox_uid_base: int = 100000
    sandbox_uid_count: int = 4096
    # "warm": a per-worker process that imported pytest once forks each run into the same namespaces, uid and
    # limits (root and bwrap isolation only; otherwise cold). "cold": a new bwrap + interpreter per run.
    sandbox_runner: SandboxRunner = SandboxRunner.WARM
    # The interpreter that runs pytest in the sandbox; None = the first same-version interpreter a run can
    # execute (this one's base interpreter, then pythonX.Y under /usr).
    sandbox_python: str | None = None
    # Where sandbox and checkout dirs are made; None = the system temp dir (the sandbox user must traverse it).
    sandbox_root: Path | None = None

    # --- the gateway API -------------------------------------------------------------------------------------
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    # The legacy routes also at `/` (legacy workers were configured with the bare app URL); off: /api only.
    gateway_serve_at_root: bool = True
    gateway_reconcile_interval: float = 1.0
    # Run the reconciler inside the API process (the default); `gateway reconcile` runs it on its own.
    gateway_reconcile_in_api: bool = True
    # A leg not finished this long after its dispatch is marked timed out and no longer waited on.
    gateway_leg_deadline_seconds: int = 1800
    # How many times a leg is run again after an infrastructure failure the student did not cause (a crashed
    # Prefect run, a Celery worker that died); after that the row shows the infrastructure error.
    gateway_infra_retries: int = 2
    # Hosts a student may name in `provider_url` (e.g. ["gitlab.example.org"]) besides their own repository's
    # host; https/ssh only (gateway/jobs/credential_binding.py).
    # Local paths and file:// are never accepted from a student, whatever this says.
    gateway_student_providers: list[str] = Field(default_factory=list)
    # The engine behind the Celery-era `/api/tasks/*` family when a submit does not name one.
    gateway_tasks_engine: str = Engine.CELERY
    # Verified logins are remembered this long so HTTP Basic does not pay the password hash on every request.
    gateway_auth_cache_seconds: float = 60.0
    # Catalog rows the submit path reads (course content + backend, member) are cached this long in each API
    # process; the process's own admin writes clear it at once, other processes' writes show after this. 0: off.
    gateway_catalog_cache_seconds: float = 5.0
    # The API's PostgreSQL pool: sized for the concurrent requests one process serves (a submit holds a
    # connection per statement). Fixed by default (no overflow): an overflow connection is closed when it is
    # returned, so a burst would open and close connections per request; a request past the pool waits for a
    # connection instead. PostgreSQL's 100 connections are shared with the engines and other processes.
    gateway_db_pool_size: int = 24
    gateway_db_max_overflow: int = 0
    # Bounds on the API's and reconciler's PostgreSQL calls: a database host cut off (no answer, no reset) would
    # otherwise hold a request for the kernel's TCP timeout (minutes); bounded, it answers 503 with Retry-After.
    gateway_db_connect_timeout_seconds: float = 5.0
    gateway_db_command_timeout_seconds: float = 15.0

    # --- operations --------------------------------------------------------------------------------------------
    # `/metrics` (Prometheus) and the counters behind it; off, the route answers 404 and nothing is recorded.
    gateway_metrics_enabled: bool = True
    # What `/metrics` reads from the store and the brokers (backlog, queue depths) is cached this long per process.
    gateway_metrics_cache_seconds: float = 5.0
    # Finished legs are deleted this many days after they ended (by the reconciler's process, in batches of
    # `gateway_retention_batch`); None keeps them for ever. Never applies to the legacy `result` rows.
    gateway_retention_days: float | None = None
    gateway_retention_batch: int = 200
    # Log lines: `json` (one object a line, with leg_id/result_id/engine), `text`, or `auto` (JSON unless on a tty).
    gateway_log_format: str = "auto"
    # Flower's basic auth (`user:password`) for `gateway up --flower` and the compose file; None = generated.
    flower_basic_auth: SecretStr | None = None

    # Cutover gates are evaluated this often inside the reconciler's process (one process at a time on PostgreSQL).
    gateway_cutover_evaluate_seconds: float = 60.0
    # The key of the console's anti-CSRF tokens (an HMAC of the login). Unset: a random key per process, so a
    # page's token is refused after a restart or by another API process (the page says so; reload it).
    gateway_console_secret: SecretStr | None = None
    # Mismatches re-run on both engines to tell a reproducible difference from a flaky test, per course content
    # (or backend) and hour (0: never re-judge).
    gateway_rejudge_per_hour: int = 20

    # ------------------------------------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        path = self.gateway_data_dir.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def uses_embedded_broker(self) -> bool:
        return self.celery_broker_url is None and self.redis_host is None

    @property
    def uses_embedded_database(self) -> bool:
        return self.postgres_host is None

    def redis_url(self) -> str | None:
        """The Redis URL with its password, or None on the embedded default."""
        if self.redis_host is None:
            return None
        auth = ""
        if self.redis_password is not None:
            auth = f":{quote(self.redis_password.get_secret_value(), safe='')}@"
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def postgres_url(self, driver: str = "psycopg2", database: str | None = None) -> str | None:
        """A SQLAlchemy URL for PostgreSQL with an explicit driver (SQLAlchemy 2.1 would pick psycopg 3)."""
        if self.postgres_host is None:
            return None
        auth = quote(self.postgres_user, safe="")
        if self.postgres_password is not None:
            auth += ":" + quote(self.postgres_password.get_secret_value(), safe="")
        db = database or self.postgres_db
        return f"postgresql+{driver}://{auth}@{self.postgres_host}:{self.postgres_port}/{db}"

    def broker_url(self) -> str:
        if self.celery_broker_url is not None:
            return self.celery_broker_url.get_secret_value()
        return self.redis_url() or "filesystem://"

    def broker_folder(self) -> Path:
        """Where the embedded `filesystem://` broker keeps its messages (shared by every local process)."""
        path = self.data_dir / "broker"
        for sub in ("out", "processed", "control", "staging"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        return path

    def result_backend_url(self) -> str:
        if self.celery_result_backend is not None:
            return self.celery_result_backend.get_secret_value()
        pg = self.postgres_url("psycopg2")
        if pg is not None:
            return "db+" + pg
        return f"db+sqlite:///{self.data_dir / 'celery-results.sqlite'}"

    def database_url(self) -> str:
        """The gateway's own store (sync driver; Alembic and the CLI)."""
        if self.gateway_database_url is not None:
            return self.gateway_database_url.get_secret_value()
        return self.postgres_url("psycopg2") or f"sqlite:///{self.data_dir / 'gateway.sqlite'}"

    def async_database_url(self) -> str:
        """The gateway's own store for the API process: the same database through an async driver."""
        url = self.database_url()
        scheme, sep, rest = url.partition("://")
        base = scheme.split("+", 1)[0]
        if base in ("postgresql", "postgres"):
            return f"postgresql+asyncpg{sep}{rest}"
        if base == "sqlite":
            return f"sqlite+aiosqlite{sep}{rest}"
        return url

    def prefect_api(self) -> str:
        """The Prefect API every Prefect process must use (never Prefect's per-process ephemeral server)."""
        return self.prefect_api_url or "http://127.0.0.1:4200/api"

    def prefect_api_headers(self) -> dict[str, str]:
        """What a plain HTTP client adds to reach the Prefect API: the auth string as Prefect's client sends it
        (`Authorization: Basic base64(auth string)`), or nothing."""
        if self.prefect_api_auth_string is None:
            return {}
        token = base64.b64encode(self.prefect_api_auth_string.get_secret_value().encode()).decode()
        return {"Authorization": f"Basic {token}"}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing the environment."""
    return Settings()
