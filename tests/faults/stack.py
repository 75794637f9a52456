"""The fault suite's stack: the API and Celery workers on a PostgreSQL cluster of the suite's own, and Redis.

The cluster is the suite's own so a test may stop it (tests/support/pg_cluster.py). Repositories: the example
reference, a passing student with many commits (one job per commit: every submit is a new job), and a slow
student whose run stays RUNNING until the test releases it (tests/support/slow_student.py). The tally counts
what a fault must not do: lose or duplicate a job.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backends.examples import DATA as EXAMPLE_DATA
from gateway.store.catalog import load_catalog
from gateway.store.migrate import upgrade
from tests.service.server import GatewayServer, running_server
from tests.support.celery_worker import WorkerProcess, base_env, settings_from_env, start_worker, stop_worker
from tests.support.git import git as _git
from tests.support.pg_cluster import PgCluster
from tests.support.slow_student import SLOW_CALC, release_slow_runs, sandbox_root
from tests.support.waiting import wait_until

PASSWORD = "faults-pw"
ADMIN = ("admin", PASSWORD)
ALICE = ("alice", PASSWORD)
SLOW = ("slow", PASSWORD)
DIRECTORY = "c/ex1"
PREFECT_DIRECTORY = "p/ex1"  # the same assignment on the Prefect backend (deployment test-assignment/system)
FINAL = {0, 1, 2, 6}


def _repo(path: Path, files: Mapping[str, str], extra_commits: int = 0) -> tuple[str, list[str]]:
    """A repository with `files`, then `extra_commits` more (same tree): one commit per job to submit."""
    path.mkdir(parents=True)
    _git(["init", "-q", "-b", "main"], path)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    _git(["add", "-A"], path)
    _git(["commit", "-q", "--no-gpg-sign", "-m", "init"], path)
    for number in range(extra_commits):
        _git(["commit", "-q", "--no-gpg-sign", "--allow-empty", "-m", f"c{number}"], path)
    commits = _git(["rev-list", "--reverse", "HEAD"], path).split()
    return path.resolve().as_uri(), commits


@dataclass
class FaultStack:
    server: GatewayServer
    env: dict[str, str]
    data: Path
    log_dir: Path
    pg: PgCluster | None
    commits: list[str]  # of the passing student: each one a new job
    slow_commit: str
    sandboxes: Path  # the workers' SANDBOX_ROOT: where slow student runs wait for their release
    workers: list[WorkerProcess] = field(default_factory=list)
    # More commits of the slow student (each a new job), none of them `slow_commit`.
    slow_commits: list[str] = field(default_factory=list)
    _used: int = 0

    def client(self, auth: tuple[str, str] | None = ADMIN) -> httpx.Client:
        return self.server.client(auth)

    def next_commits(self, count: int) -> list[str]:
        taken = self.commits[self._used : self._used + count]
        assert len(taken) == count, "the stack's repository has too few commits left"
        self._used += count
        return taken

    def start_worker(
        self,
        extra: Mapping[str, str] | None = None,
        hostname: str | None = None,
        log_dir: Path | None = None,
        prefix: Sequence[str] = (),
    ) -> WorkerProcess:
        """A worker on the stack (`hostname`: e.g. a killed one's, as a restart under the same name; give it another
        `log_dir` then, so the first one's log is kept; `prefix`: e.g. on another host, `ip netns exec NAME`)."""
        env = base_env({**self.env, **(extra or {})}, self.data)
        worker = start_worker(env, concurrency=2, hostname=hostname, log_dir=log_dir or self.log_dir, prefix=prefix)
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process.poll() is None]

    def worker_logs(self) -> str:
        return "".join(w.log_text() for w in self.workers)

    def executions(self, leg_id: str) -> int:
        """How many times a worker began the work of `leg_id` (a skipped duplicate does not count)."""
        return len(re.findall(rf"running \S+ {re.escape(leg_id)}\b", self.worker_logs()))


@dataclass
class Tally:
    """What a fault did to the jobs: accepted (200), refused (503 + Retry-After), anything else is a defect."""

    accepted: dict[str, str] = field(default_factory=dict)  # result id -> leg id
    refused: int = 0
    refused_without_retry_after: int = 0
    other: list[str] = field(default_factory=list)

    def record(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            run = response.json()
            self.accepted[run["id"]] = run["test_system_id"]
        elif response.status_code == 503:
            self.refused += 1
            if not response.headers.get("Retry-After"):
                self.refused_without_retry_after += 1
        else:
            self.other.append(f"{response.status_code} {response.text[:200]}")

    def outcome(self, stack: FaultStack, client: httpx.Client, timeout: float) -> dict[str, Any]:
        """Wait until every accepted job is final (bounded), then count completed once / lost / duplicated."""

        def all_final() -> dict[str, int] | None:
            release_slow_runs(stack.sandboxes)  # a slow student's run goes on once the fault has happened
            statuses = {rid: client.get(f"/api/results/{rid}/status").json() for rid in self.accepted}
            return statuses if all(s in FINAL for s in statuses.values()) else None

        try:
            statuses = wait_until(all_final, "every accepted job to finish", timeout=timeout, interval=1.0)
        except AssertionError:
            statuses = {rid: client.get(f"/api/results/{rid}/status").json() for rid in self.accepted}
        runs = Counter({leg: stack.executions(leg) for leg in self.accepted.values()})
        completed = {rid for rid, status in statuses.items() if status == 0}
        return {
            "accepted": len(self.accepted),
            "completed_once": sum(1 for rid in completed if runs[self.accepted[rid]] == 1),
            "lost": len(self.accepted) - len(completed),
            "duplicated": sum(1 for leg in self.accepted.values() if runs[leg] > 1),
            "refused_503": self.refused,
            "other_answers": self.other,
        }


def _catalog(reference: tuple[str, list[str]], passing: str, slow: str) -> dict[str, Any]:
    contents = [
        {
            "id": f"cc-{backend}",
            "path": directory.replace("/", "."),
            "directory": directory,
            "execution_backend": f"{backend}-main",
            "reference_url": reference[0],
            "reference_commit": reference[1][-1],
        }
        for backend, directory in (("celery", DIRECTORY), ("prefect", PREFECT_DIRECTORY))
    ]
    return {
        "execution_backends": [
            {"slug": "celery-main", "type": "celery", "properties": {}},
            {"slug": "prefect-main", "type": "prefect", "properties": {"deployment": "test-assignment/system"}},
        ],
        "course_contents": contents,
        "course_members": [
            {"id": "m-alice", "user_id": "u-alice", "repository_url": passing},
            {"id": "m-slow", "user_id": "u-slow", "repository_url": slow},
        ],
        "users": [
            {"username": "admin", "password": PASSWORD, "role": "admin"},
            {"username": "alice", "password": PASSWORD, "role": "student", "course_member_ids": ["m-alice"]},
            {"username": "slow", "password": PASSWORD, "role": "student", "course_member_ids": ["m-slow"]},
        ],
    }


@contextlib.contextmanager
def fault_stack(
    tmp: Path,
    pg: PgCluster | None,
    service_env: Mapping[str, str],
    jobs: int,
    *,
    celery_worker: bool = True,
) -> Iterator[FaultStack]:
    """The API (on `pg`, or the embedded SQLite store without it) and, unless told otherwise, a Celery worker."""
    example = EXAMPLE_DATA / "reference" / "week1" / "ex1"
    dirs = (DIRECTORY, PREFECT_DIRECTORY)
    reference = _repo(
        tmp / "repos" / "reference", {f"{d}/{f.name}": f.read_text() for d in dirs for f in example.iterdir()}
    )
    passing_calc = (EXAMPLE_DATA / "passing" / "week1" / "ex1" / "calc.py").read_text()
    passing = _repo(tmp / "repos" / "passing", {f"{d}/calc.py": passing_calc for d in dirs}, extra_commits=jobs)
    slow = _repo(tmp / "repos" / "slow", {f"{d}/calc.py": SLOW_CALC for d in dirs}, extra_commits=8)
    data = tmp / "data"
    with contextlib.ExitStack() as cleanup:
        sandboxes = cleanup.enter_context(sandbox_root())
        env = {
            **(pg.env() if pg is not None else {}),
            "GATEWAY_RECONCILE_INTERVAL": "0.3",
            # Declared gone after 5 s without a ping answer (the default is 15 s): the bound the suite checks.
            "CELERY_WORKER_LOST_SECONDS": "5",
            **service_env,  # last: a module may set its own bounds
            "SANDBOX_ROOT": str(sandboxes),
            # The slow students block (they wait for their release), they do not compute: admit more of them at
            # once than this machine's cores would (backends.work.sandbox_slots).
            "SANDBOX_SLOTS": "8",
        }
        settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)})
        upgrade(settings)
        load_catalog(_catalog(reference, passing[0], slow[0]), settings)
        server = cleanup.enter_context(running_server(env, data))
        stack = FaultStack(server, env, data, tmp, pg, passing[1], slow[1][-1], sandboxes, slow_commits=slow[1][:-1])
        try:
            if celery_worker:
                stack.start_worker()
            yield stack
        finally:
            release_slow_runs(sandboxes)  # nothing left blocking a worker slot while the stack stops
            for worker in stack.workers:
                stop_worker(worker, graceful=False)  # the module is over: no warm shutdown (see stop_worker)
