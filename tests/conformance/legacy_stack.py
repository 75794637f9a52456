"""The conformance stack: a real gateway API in front of a real Celery worker and a real Prefect server + runner.

Everything a legacy client needs to be served for real: git repositories with the example assignment at one
directory per backend (so a client can submit by `directory` on every engine), a catalog with one backend of
each kind the contract names, and processes started in their own process groups and stopped by pid.

Imported by the conformance tests as `legacy_stack` (tests/conformance has no `__init__.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backends.examples import DATA as EXAMPLE_DATA
from gateway.store.catalog import load_catalog
from gateway.store.migrate import upgrade
from tests.service.server import GatewayServer, running_server
from tests.support.celery_worker import (
    ALL_QUEUES,
    WorkerProcess,
    base_env,
    settings_from_env,
    start_worker,
    stop_worker,
)
from tests.support.git import git as _git
from tests.support.prefect_server import (
    STARTUP,
    free_port,
    prefect_process_env,
    running_prefect_server,
    running_runner,
)
from tests.support.slow_student import SLOW_CALC, release_slow_runs, sandbox_root
from tests.support.waiting import wait_until  # noqa: F401 - re-exported: the conformance tests import it from here

PASSWORD = "conformance-pw"
ADMIN = ("admin", PASSWORD)
WORKER = ("worker", PASSWORD)
ALICE = ("alice", PASSWORD)
BOB = ("bob", PASSWORD)
CAROL = ("carol", PASSWORD)
SLOW = ("slow", PASSWORD)
DAVE = ("dave", PASSWORD)
DAVE_CREDENTIAL = "dave-git"  # a name in the worker's secret store
DAVE_TOKEN = "glpat-dave-secret-never-sent"  # the secret itself: must appear nowhere the gateway writes or sends


FINAL = {0, 1, 2, 6}
FINAL_NAMES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}

# Directory (and dotted path) of the assignment per backend; every repository carries it at each of them.
DIRS = {"celery": "c/ex1", "prefect": "p/ex1", "legacy": "l/ex1", "writeback": "w/ex1", "missing": "m/ex1",
        "capped": "x/ex1", "mystery": "k/ex1", "untimed-celery": "uc/ex1", "untimed-prefect": "up/ex1",
        "legacy-submit": "ls/ex1", "walk": "cw/ex1", "demote": "cd/ex1", "rejudge": "cr/ex1",
        "busy": "cb/ex1", "celery-busy": "pb/ex1", "celery-idle": "pi/ex1"}  # fmt: skip
# Contents whose assignment sets no time limit of its own: each engine's sandbox default applies (shadow tests
# give the two engines different limits through their workers' settings).
UNTIMED = {DIRS["untimed-celery"], DIRS["untimed-prefect"], DIRS["busy"]}


# ------------------------------------------------------------------------------------------------ repositories
# Sandboxes admitted at once on this host (backends.work.sandbox_slots): see `legacy_stack`.
CONFORMANCE_SLOTS = "8"


def _repo(path: Path, files: Mapping[str, str]) -> tuple[str, str]:
    path.mkdir(parents=True, exist_ok=True)
    _git(["init", "-q", "-b", "main"], path)
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    _git(["add", "-A"], path)
    _git(["commit", "-q", "--no-gpg-sign", "-m", "init"], path)
    return path.resolve().as_uri(), _git(["rev-parse", "HEAD"], path)


@dataclass(frozen=True)
class Repos:
    reference: tuple[str, str]
    students: dict[str, tuple[str, str]]  # passing, failing, slow → (url, commit)

    def commit(self, student: str) -> str:
        return self.students[student][1]


def build_repos(dest: Path) -> Repos:
    """The example assignment copied to every directory in DIRS, in a reference and three student repositories."""
    example = EXAMPLE_DATA / "reference" / "week1" / "ex1"
    ref_files = {f"{d}/{f.name}": f.read_text() for d in DIRS.values() for f in example.iterdir() if f.is_file()}
    for d in UNTIMED:
        meta = ref_files[f"{d}/meta.yaml"]
        ref_files[f"{d}/meta.yaml"] = "\n".join(line for line in meta.splitlines() if "executionTimeLimit" not in line)
    passing = (EXAMPLE_DATA / "passing" / "week1" / "ex1" / "calc.py").read_text()
    failing = (EXAMPLE_DATA / "failing" / "week1" / "ex1" / "calc.py").read_text()
    students = {
        name: _repo(dest / name, {f"{d}/calc.py": text for d in DIRS.values()})
        for name, text in (("passing", passing), ("failing", failing), ("slow", SLOW_CALC))
    }
    return Repos(reference=_repo(dest / "reference", ref_files), students=students)


def catalog(repos: Repos) -> dict[str, Any]:
    ref_url, ref_commit = repos.reference
    backend_of = {"celery": "celery-main", "prefect": "prefect-main", "legacy": "prefect-legacy",
                  "writeback": "prefect-foreign", "missing": "prefect-missing", "capped": "celery-main",
                  "mystery": "mystery", "untimed-celery": "celery-main", "untimed-prefect": "prefect-main",
                  "legacy-submit": "prefect-legacy-submit", "walk": "prefect-main",
                  "demote": "prefect-main", "rejudge": "celery-main", "busy": "celery-main",
                  "celery-busy": "prefect-main", "celery-idle": "prefect-main"}  # fmt: skip
    contents = []
    for key, directory in DIRS.items():
        contents.append(
            {
                "id": f"cc-{key}",
                "path": directory.replace("/", "."),
                "directory": directory,
                "execution_backend": backend_of[key],
                "reference_url": ref_url,
                "reference_commit": ref_commit,
                **({"max_submissions": 1} if key == "capped" else {}),
            }  # fmt: skip
        )
    contents.append({"id": "cc-unit", "path": "unit1", "directory": "unit1", "kind": "unit",
                     "execution_backend": "celery-main"})  # fmt: skip
    members = {"m-alice": "passing", "m-bob": "failing", "m-carol": "passing", "m-slow": "slow"}
    return {
        "execution_backends": [
            {"slug": "celery-main", "type": "celery", "properties": {}},
            {"slug": "prefect-main", "type": "prefect", "properties": {"deployment": "test-assignment/system"}},
            {"slug": "prefect-legacy", "type": "prefect_builtin", "properties": {}},
            {"slug": "prefect-foreign", "type": "prefect",
             "properties": {"deployment": "gateway-test-writeback/system"}},
            # Tested by the write-back flow, submitted to a deployment playing the platform's `submit-result`.
            {"slug": "prefect-legacy-submit", "type": "prefect",
             "properties": {"deployment": "gateway-test-writeback/system",
                            "submission_deployment": "gateway-test-legacy-submit/system"}},
            {"slug": "prefect-missing", "type": "prefect", "properties": {"deployment": "no-such-flow/system"}},
            {"slug": "mystery", "type": "kubernetes", "properties": {}},
        ],
        "course_contents": contents,
        "course_members": [
            *({"id": m, "user_id": f"u-{m[2:]}", "repository_url": repos.students[s][0]} for m, s in members.items()),
            # A member whose repository needs a credential: named, and (wrongly) also inside the URL.
            {"id": "m-dave", "user_id": "u-dave", "credential": DAVE_CREDENTIAL,
             "repository_url": f"https://dave:{DAVE_TOKEN}@git.example.invalid/course/dave.git"},
        ],
        "users": [
            {"username": "admin", "password": PASSWORD, "role": "admin"},
            {"username": "worker", "password": PASSWORD, "role": "worker"},
            *({"username": m[2:], "password": PASSWORD, "role": "student", "course_member_ids": [m]}
              for m in (*members, "m-dave")),
        ],
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------------ Prefect
def prefect_server_on(port: int, root: Path, timeout: float = STARTUP) -> contextlib.AbstractContextManager[str]:
    """`prefect server start` on a given port with its database under `root`, so it can come back the same."""
    return running_prefect_server(root, port=port, timeout=timeout)


def runner_env(
    api_url: str, root: Path, data: Path, server: GatewayServer, sandbox_root: str | None = None
) -> dict[str, str]:
    """The runner shares the gateway's data folder (persisted results) and knows how to write back."""
    (root / "runner-home").mkdir(parents=True, exist_ok=True)
    return prefect_process_env(
        api_url,
        root / "runner-home",
        {
            "GATEWAY_DATA_DIR": str(data),
            "GATEWAY_WRITEBACK_URL": server.url,
            "GATEWAY_WRITEBACK_USER": WORKER[0],
            "GATEWAY_WRITEBACK_PASSWORD": WORKER[1],
            **({"SANDBOX_ROOT": sandbox_root} if sandbox_root else {}),
            "SANDBOX_SLOTS": CONFORMANCE_SLOTS,
        },
    )


RUNNER_DEPLOYMENTS = (
    "test-assignment/system",
    "submit-result/system",
    "gateway-test-writeback/system",
    "gateway-test-legacy-submit/system",
)


def flow_runs_by_leg(api_url: str, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every flow run that one of `run_ids` names, straight from Prefect: a gateway leg id (the flow run's
    idempotency key) or a flow run's own id (what `test_system_id` becomes once Prefect accepted the run)."""
    found: dict[str, list[dict[str, Any]]] = {run_id: [] for run_id in run_ids}
    for key in ("idempotency_key", "id"):
        body = {"flow_runs": {key: {"any_": run_ids}}, "limit": 200}
        for run in httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=30).json():
            if run not in found[run[key]]:
                found[run[key]].append(run)
    return found


# -------------------------------------------------------------------------------------------------- the stack
@dataclass
class Stack:
    server: GatewayServer
    data: Path
    env: dict[str, str]  # the gateway's and the Celery worker's settings
    repos: Repos
    log_dir: Path
    prefect_api: str | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def worker(self) -> WorkerProcess:
        return self.workers[-1]

    def client(self, auth: tuple[str, str] | None = ADMIN) -> httpx.Client:
        return self.server.client(auth)

    @property
    def sandbox_root(self) -> Path:
        return Path(self.env["SANDBOX_ROOT"])

    def release_slow_runs(self) -> int:
        """Let every slow student run waiting now go on (it finds `release` in its work dir); how many."""
        return release_slow_runs(self.sandbox_root)

    def start_worker(
        self, extra: Mapping[str, str] | None = None, *, concurrency: int = 2, queues: Sequence[str] = ALL_QUEUES
    ) -> WorkerProcess:
        """A Celery worker on the stack's broker; every worker ever started is stopped at the stack's end."""
        env = base_env({**self.env, **(extra or {})}, self.data)
        worker = start_worker(env, concurrency=concurrency, queues=queues, log_dir=self.log_dir)
        self.workers.append(worker)
        return worker


@contextlib.contextmanager
def running_stack(
    tmp: Path,
    pg_env: Mapping[str, str],
    redis_env: Mapping[str, str],
    *,
    prefect: bool,
    worker_extra: Mapping[str, str] | None = None,
    gateway_extra: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """The API on PostgreSQL, a Celery worker on Redis + PostgreSQL and (optionally) a Prefect server + runner.

    `worker_extra`: settings for the Celery worker only (e.g. a sandbox limit that differs from Prefect's);
    `gateway_extra`: settings for the API (and the worker), e.g. `GATEWAY_REJUDGE_PER_HOUR`."""
    data = tmp / "data"
    repos = build_repos(tmp / "repos")
    with contextlib.ExitStack() as stack:
        prefect_api = None
        sandboxes = stack.enter_context(sandbox_root())
        # SANDBOX_SLOTS: the slow students here block (they wait for their release), they do not compute; the
        # cases hold four at once, more than this machine's cores would admit.
        env = {**pg_env, **redis_env, "GATEWAY_RECONCILE_INTERVAL": "0.3", "SANDBOX_ROOT": str(sandboxes),
               "SANDBOX_SLOTS": CONFORMANCE_SLOTS, **(gateway_extra or {})}  # fmt: skip
        if prefect:
            prefect_api = stack.enter_context(prefect_server_on(free_port(), tmp / "prefect"))
            env["PREFECT_API_URL"] = prefect_api
        settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)})
        upgrade(settings)
        load_catalog(catalog(repos), settings)
        # The provider a student names in the clone-failure case (an empty list no longer means any host).
        providers = {"GATEWAY_STUDENT_PROVIDERS": '["no-such-provider.invalid"]'}
        server = stack.enter_context(running_server({**env, **providers}, data))
        result = Stack(server=server, data=data, env=env, repos=repos, log_dir=tmp, prefect_api=prefect_api)
        if prefect_api is not None:
            stack.enter_context(
                running_runner(
                    runner_env(prefect_api, tmp / "prefect", data, server, env["SANDBOX_ROOT"]),
                    limit=4,
                    test_flows=True,
                    wait_for=RUNNER_DEPLOYMENTS,
                    log_path=tmp / "prefect" / "runner.log",
                )
            )
        try:
            result.start_worker(worker_extra)
            yield result
        finally:
            result.release_slow_runs()  # nothing left blocking a worker slot while the stack stops
            for worker in result.workers:
                stop_worker(worker, graceful=False)  # the module is over: no warm shutdown (see stop_worker)


# ------------------------------------------------------------------- the API calls the evidence tests share
def submit_job(client: httpx.Client, key: str, member: str, commit: str, **extra: Any) -> str:
    """`POST /api/tests` of `commit` for `member` on content `key`; the new row's id."""
    body = {"directory": DIRS[key], "course_member_id": member, "version_identifier": commit, **extra}
    answer = client.post("/api/tests", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def comparison_of(client: httpx.Client, result_id: str) -> dict[str, Any] | None:
    """The job's comparison, or None while it has none yet."""
    answer = client.get(f"/api/results/{result_id}/comparison")
    return answer.json() if answer.status_code == 200 else None


def evaluate_gate(client: httpx.Client, key: str) -> dict[str, Any]:
    """A dry-run gate evaluation of content `key`'s migration (changes nothing)."""
    answer = client.post(f"/api/admin/cutover/content/{key}/evaluate", params={"dry_run": True})
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["evaluation"])
