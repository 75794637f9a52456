"""Shadow runs on the real engines, both directions: a job whose reports match, a real mismatch (the engines
given different time limits), an infra error and a timeout on the shadow side with the primary unaffected, a
write-back from a Prefect deployment the gateway did not write landing on the shadow leg, the cap and the
sampling counted, an A/A flake (a solution whose result the test scripts per run) counted as noise.

One stack for the module: the Celery worker's sandbox limit is 4 s and Prefect's the default (60 s), so a slow
student (who waits for the test's release) on a content without a time limit of its own times out on Celery and,
released after that, passes on Prefect.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from legacy_stack import ADMIN, ALICE, DIRS, Stack, _git, _repo, runner_env, running_stack, wait_until
from sqlalchemy import select

from gateway.store.db import make_sync_engine
from gateway.store.models import Leg
from tests.conftest import PostgresDB, RedisDB
from tests.service.conftest import fresh_pg_database
from tests.support.celery_worker import base_env, settings_from_env, stop_worker
from tests.support.prefect_server import running_runner
from tests.support.scripted_student import SCRIPTED_CALC, give_verdict
from tests.support.slow_student import sandbox_root, waiting_markers

pytestmark = [pytest.mark.slow]
FINAL = {0, 1, 2, 6}
CELERY_LIMIT = {"SANDBOX_TIMEOUT_SECONDS": "4"}
# These tests pin what one comparison says; a mismatch's re-judgement (re-runs of a slow student that wait for a
# release, holding runner slots) is tested on its own in test_evidence.py.
NO_REJUDGE = {"GATEWAY_REJUDGE_PER_HOUR": "0"}

# The A/A test's jobs, each the scripted student of tests/support/scripted_student.py.
SCRIPTED_JOBS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_db: PostgresDB, redis_db: RedisDB) -> Iterator[Stack]:
    with (
        fresh_pg_database(postgres_db) as db,
        running_stack(
            tmp_path_factory.mktemp("shadow"),
            db.env(),
            redis_db.env(),
            prefect=True,
            worker_extra=CELERY_LIMIT,
            gateway_extra=NO_REJUDGE,
        ) as found,
    ):
        yield found


def shadow(client: httpx.Client, content: str, **values: Any) -> None:
    answer = client.put(f"/api/admin/shadow/contents/{content}", json={"fraction": 1.0, **values})
    assert answer.status_code == 200, answer.text


def submit(client: httpx.Client, key: str, member: str, commit: str, **extra: Any) -> httpx.Response:
    body = {"directory": DIRS[key], "course_member_id": member, "version_identifier": commit, **extra}
    answer = client.post("/api/tests", json=body)
    assert answer.status_code == 200, answer.text
    return answer


def comparison_of(
    client: httpx.Client, result_id: str, timeout: float = 240, kinds: frozenset[str] = frozenset({"shadow"})
) -> dict[str, Any]:
    """The job's comparison once every kind in `kinds` has one (an A/A pair usually ends before the shadow)."""

    def found() -> dict[str, Any] | None:
        answer = client.get(f"/api/results/{result_id}/comparison")
        if answer.status_code != 200:
            return None
        got = answer.json()
        present = {got["kind"], *(c["kind"] for c in got["other_comparisons"])}
        return got if kinds <= present else None

    return wait_until(found, f"the comparison of {result_id}", timeout)


def final_row(client: httpx.Client, result_id: str, timeout: float = 240) -> dict[str, Any]:
    wait_until(lambda: client.get(f"/api/results/{result_id}/status").json() in FINAL, f"{result_id}", timeout)
    return client.get(f"/api/results/{result_id}").json()


# ------------------------------------------------------------------------------------------------- match
@pytest.mark.parametrize(("key", "other"), [("celery", "prefect"), ("prefect", "celery")])
def test_reports_that_match_and_the_answer_unchanged(stack: Stack, key: str, other: str) -> None:
    commit = stack.repos.commit("passing")
    with stack.client(ADMIN) as admin:
        off = submit(admin, key, "m-carol", commit)  # shadowing off for this content
        shadow(admin, f"cc-{key}", engine=other)
        on = submit(admin, key, "m-alice", commit)
        # The client's answer is byte-for-byte what it is with shadowing off (ids, member and times aside).
        a, b = off.json(), on.json()
        masked = off.content
        for name in ("id", "test_system_id", "course_member_id", "created_at", "updated_at"):
            masked = masked.replace(json.dumps(a[name]).encode(), json.dumps(b[name]).encode())
        assert masked == on.content
        row = final_row(admin, b["id"])
        found = comparison_of(admin, b["id"])
        assert (found["outcome"], found["kind"]) == ("match", "shadow"), found
        assert (found["primary"]["engine"], found["shadow"]["engine"]) == (key, other)
        assert found["primary"]["score"] == found["shadow"]["score"] == row["result"] == 1.0
        assert found["shadow"]["run_seconds"] is not None
        # A student sees nothing of it.
    with stack.client(ALICE) as alice:
        assert alice.get(f"/api/results/{b['id']}/comparison").status_code == 403
        assert alice.get("/api/comparisons").status_code == 403


# ---------------------------------------------------------------------------------------------- mismatch
def leg_finished(stack: Stack, result_id: str, engine: str = "celery") -> bool:
    """Whether the job's first leg on `engine` (primary or shadow; not a re-judgement's re-run) is final, read
    from the gateway's store."""
    engine_ = make_sync_engine(settings_from_env({**stack.env, "GATEWAY_DATA_DIR": str(stack.data)}))
    try:
        with engine_.connect() as conn:
            stmt = select(Leg.finished).where(
                Leg.result_id == result_id, Leg.engine == engine, Leg.role.in_(("primary", "shadow"))
            )
            return bool(conn.execute(stmt.order_by(Leg.created_at).limit(1)).scalar())
    finally:
        engine_.dispose()


@pytest.mark.parametrize(("key", "other"), [("untimed-celery", "prefect"), ("untimed-prefect", "celery")])
def test_different_time_limits_are_a_real_mismatch(stack: Stack, key: str, other: str) -> None:
    """The slow solution waits for the test's release: Celery's 4 s limit ends its run first (TIMEDOUT), then the
    Prefect run (60 s) is let go and passes."""
    with stack.client(ADMIN) as admin:
        shadow(admin, f"cc-{key}", engine=other)
        run = submit(admin, key, "m-slow", stack.repos.commit("slow")).json()

        def released() -> bool:
            # Once Celery's run has timed out, release every waiting slow run (an earlier mismatch's re-judgement
            # re-runs a slow student too) until this job's Prefect run has ended.
            if not leg_finished(stack, run["id"], "celery"):
                return False
            stack.release_slow_runs()
            return leg_finished(stack, run["id"], "prefect")

        wait_until(released, "the Celery run to time out and the Prefect run to be released and end", 180)
        row = final_row(admin, run["id"])
        found = comparison_of(admin, run["id"])
    assert found["outcome"] == "mismatch", found
    timed_out = "celery" if key == "untimed-celery" else "prefect"
    celery_score = found["primary"]["score"] if timed_out == "celery" else found["shadow"]["score"]
    prefect_score = found["shadow"]["score"] if timed_out == "celery" else found["primary"]["score"]
    # Celery's limit (4 s) cuts the slow solution; Prefect's (60 s) lets it pass.
    assert prefect_score == 1.0 and celery_score < 1.0
    assert row["result"] == found["primary"]["score"]  # the row is the primary's, whatever the shadow said
    paths = [d["path"] for d in found["differences"]]
    assert any(p.startswith('$.tests["') for p in paths) and "$.score" in paths
    # The environments say why, beside the grades (issue 27: parity).
    limits = {"celery": "4 s", "prefect": "60 s"}
    primary, shadow_engine = found["primary"]["engine"], found["shadow"]["engine"]
    expected = f"{primary}: time limit {limits[primary]}, {shadow_engine}: {limits[shadow_engine]}"
    assert expected in found["environment"]["text"].split("; "), found["environment"]


# -------------------------------------------------------------------------------------- shadow-side failures
def test_an_engine_that_refuses_the_shadow_is_an_infra_error_and_the_primary_is_unaffected(stack: Stack) -> None:
    with stack.client(ADMIN) as admin:
        shadow(admin, "cc-celery", engine="prefect", properties={"deployment": "no-such-flow/system"})
        run = submit(admin, "celery", "m-bob", stack.repos.commit("failing")).json()
        found = comparison_of(admin, run["id"])
        row = final_row(admin, run["id"])
    assert (found["outcome"], found["side"]) == ("infra_error", "shadow"), found
    assert "no-such-flow" in found["reason"]
    assert row["status"] == 0 and row["result_json"]["summary"]["total"] == 3


def test_a_stopped_shadow_engine_ends_in_shadow_timeout_and_the_primary_is_unaffected(stack: Stack) -> None:
    """The Celery worker stopped: the shadow leg waits in the broker until its deadline; Prefect answers."""
    with stack.client(ADMIN) as admin:
        # Nothing consumes the shadow's message, so it ends at its deadline however long that is: a short one.
        shadow(admin, "cc-prefect", engine="celery", deadline_seconds=8)
        stop_worker(stack.worker)
        try:
            run = submit(admin, "prefect", "m-bob", stack.repos.commit("failing")).json()
            row = final_row(admin, run["id"])
            assert row["status"] == 0 and row["result"] < 1.0  # the primary's verdict, on time
            found = comparison_of(admin, run["id"], timeout=120)
        finally:
            stack.start_worker(CELERY_LIMIT)
    assert found["outcome"] == "shadow_timeout", found
    assert found["primary"]["score"] == row["result"]


def test_a_stopped_prefect_runner_is_an_infra_error_on_the_shadow_side(stack: Stack) -> None:
    """The shadow's deployment lost its runner: Prefect reports the run Late / the deployment unpolled, so at the
    deadline the shadow is an infra error (its engine stopped), not a slow run; the Celery primary answers."""
    assert stack.prefect_api is not None
    env = runner_env(
        stack.prefect_api, stack.log_dir / "stopped-runner", stack.data, stack.server, stack.env["SANDBOX_ROOT"]
    )
    with running_runner(env, deployment_name="stopped", wait_for=["test-assignment/stopped"]):
        pass  # registered and polled once, then stopped: nothing serves the deployment any more
    with stack.client(ADMIN) as admin:
        properties = {"deployment": "test-assignment/stopped"}
        shadow(admin, "cc-celery", engine="prefect", deadline_seconds=50, properties=properties)
        # A member and commit this content has not seen yet (an existing run would be answered as it is).
        run = submit(admin, "celery", "m-slow", stack.repos.commit("slow")).json()
        wait_until(lambda: stack.release_slow_runs() > 0, "the slow primary run to wait for its release")
        row = final_row(admin, run["id"])
        found = comparison_of(admin, run["id"], timeout=150)
    assert (found["outcome"], found["side"]) == ("infra_error", "shadow"), found
    assert "nothing executing it" in found["reason"]
    assert row["status"] == 0 and row["result_json"]["summary"]["total"] == 3  # the primary's report


# ---------------------------------------------------------------------------------------------- write-back
def test_a_write_back_from_an_unknown_deployment_lands_on_the_shadow_leg(stack: Stack) -> None:
    """The shadow runs on a Prefect deployment the gateway did not write: it looks itself up by its flow run id
    and PATCHes its verdict (0.5); that lands on its leg, and the row keeps the Celery primary's 1.0."""
    with stack.client(ADMIN) as admin:
        shadow(admin, "cc-capped", engine="prefect", properties={"deployment": "gateway-test-writeback/system"})
        run = submit(admin, "capped", "m-carol", stack.repos.commit("passing")).json()
        found = comparison_of(admin, run["id"])
        row = final_row(admin, run["id"])
        status = admin.get(f"/api/tasks/{found['shadow']['leg_id']}/status").json()
    assert (row["result"], row["status"]) == (1.0, 0)
    assert row["updated_by"] == row["created_by"]  # the worker account never wrote the row
    assert (found["outcome"], found["shadow"]["score"], found["primary"]["score"]) == ("mismatch", 0.5, 1.0)
    assert status["status"] == "finished"


# ----------------------------------------------------------------------------------------- cap and sampling
def test_the_cap_and_the_sampling_are_counted(stack: Stack) -> None:
    commits = {"passing": stack.repos.commit("passing"), "failing": stack.repos.commit("failing")}
    with stack.client(ADMIN) as admin:
        shadow(admin, "cc-legacy", engine="celery", max_in_flight=0)
        submit(admin, "legacy", "m-alice", commits["passing"])
        shadow(admin, "cc-legacy", fraction=0.0, max_in_flight=10)
        submit(admin, "legacy", "m-bob", commits["failing"])

        def counted() -> dict[str, int] | None:
            groups = admin.get("/api/comparisons/summary", params={"group_by": "content"}).json()
            skipped = next((g["skipped"] for g in groups if g["content"] == "cc-legacy"), {})
            return skipped if skipped.get("cap_reached") and skipped.get("sampled_out") else None

        assert wait_until(counted, "the skip counts") == {"cap_reached": 1, "sampled_out": 1}
        assert admin.get("/api/comparisons", params={"course_content_id": "cc-legacy"}).headers["X-Total-Count"] == "0"


# ------------------------------------------------------------------------------------------------- A/A noise
@contextlib.contextmanager
def scripted_repo(root: Path) -> Iterator[list[str]]:
    """A student repository (at `<root>/dice.git`) with one commit per job, each the same scripted solution."""
    url, first = _repo(root / "dice.git", {f"{DIRS['celery']}/calc.py": SCRIPTED_CALC})
    commits = [first]
    for i in range(SCRIPTED_JOBS - 1):
        (root / "dice.git" / "note.txt").write_text(str(i))
        _git(["add", "-A"], root / "dice.git")
        _git(["commit", "-q", "--no-gpg-sign", "-m", f"again {i}"], root / "dice.git")
        commits.append(_git(["rev-parse", "HEAD"], root / "dice.git"))
    yield commits


def script_one_job(celery_runs: Path, prefect_runs: Path, given: set[Path]) -> None:
    """The job's three runs, as each starts waiting: its two Celery runs (primary and A/A, in either order) one
    with `add` wrong and one with `mul` wrong, its Prefect shadow right. Whichever Celery run is the primary, the
    A/A pair flips on both tests and the shadow differs from the primary on one of them."""
    celery_verdicts = ["add", "mul"]
    prefect_verdicts = ["none"]

    def all_given() -> bool:
        for root, verdicts in ((celery_runs, celery_verdicts), (prefect_runs, prefect_verdicts)):
            for marker in waiting_markers(root):
                work = marker.parent
                if work in given or (work / "release").exists() or not verdicts:
                    continue  # already scripted, or a slow student of another test
                give_verdict(work, verdicts.pop(0))
                given.add(work)
        return not celery_verdicts and not prefect_verdicts

    wait_until(all_given, "the job's two Celery runs and its Prefect run to wait for their verdicts", 240)


def test_an_aa_flake_is_counted_as_noise(stack: Stack, tmp_path: Path) -> None:
    """Scripted flips: job 1's A/A pair records `add` and `mul` as flaky, so job 2's shadow, which differs from
    its primary only on one of them, is noise, not a mismatch. The Prefect shadow runs on a runner of its own
    (its own sandbox root), so the test knows which runs are the engines'."""
    assert stack.prefect_api is not None
    given: set[Path] = set()
    with contextlib.ExitStack() as scope:
        prefect_runs = scope.enter_context(sandbox_root())
        env = runner_env(stack.prefect_api, tmp_path / "runner", stack.data, stack.server, str(prefect_runs))
        scope.enter_context(running_runner(env, deployment_name="scripted", wait_for=["test-assignment/scripted"]))
        commits = scope.enter_context(scripted_repo(tmp_path))
        admin = scope.enter_context(stack.client(ADMIN))
        properties = {"deployment": "test-assignment/scripted"}
        shadow(admin, "cc-celery", engine="prefect", aa_fraction=1.0, properties=properties)
        found = []
        for commit in commits:  # one job at a time: job 1's flake evidence is recorded before job 2 is compared
            run = submit(admin, "celery", "m-alice", commit, provider_url=tmp_path.as_uri(), project="dice").json()
            script_one_job(stack.sandbox_root, prefect_runs, given)
            found.append(comparison_of(admin, run["id"], kinds=frozenset({"aa", "shadow"})))
        kinds = [[c["kind"] for c in [f, *f["other_comparisons"]]] for f in found]
        assert all(sorted(k) == ["aa", "shadow"] for k in kinds), kinds
        aa = [o for f in found for o in f["other_comparisons"] if o["kind"] == "aa"]
        assert [o["outcome"] for o in aa] == ["mismatch"] * SCRIPTED_JOBS, aa
        shadows = [f if f["kind"] == "shadow" else next(o for o in f["other_comparisons"] if o["kind"] == "shadow")
                   for f in found]  # fmt: skip
        assert shadows[0]["outcome"] in ("mismatch", "noise"), shadows[0]  # noise if its own A/A came first
        assert shadows[1]["outcome"] == "noise", shadows[1]
        groups = admin.get("/api/comparisons/summary", params={"group_by": "content"}).json()
        group = next(g for g in groups if g["content"] == "cc-celery")
    assert group["aa"]["flips"] >= SCRIPTED_JOBS
    assert group["mismatch_rate_noise_adjusted"] < group["mismatch_rate"]


# ---------------------------------------------------------------------------------------------------- replay
def replay_cli(stack: Stack, limit: int) -> str:
    """`gateway replay` as its own process on the stack's database (the API's reconciler does the rest)."""
    command = [str(Path(sys.executable).with_name("gateway")), "replay", "--engine", "celery"]
    command += ["--content", "cc-prefect", "--limit", str(limit), "--rate", "5"]
    done = subprocess.run(command, env=base_env(stack.env, stack.data), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_replay_runs_stored_jobs_on_the_other_engine_once_each(stack: Stack) -> None:
    """Stored Prefect jobs replayed on Celery in two goes (the second resumes where the first stopped): one
    replay comparison per job, and the rows exactly as they were."""
    with stack.client(ADMIN) as admin:
        rows = admin.get("/api/results", params={"course_content_id": "cc-prefect"}).json()
        before = {r["id"]: r for r in rows if r["status"] in (0, 1)}
    assert len(before) >= 3
    assert "2 replay legs sent on celery" in replay_cli(stack, 2)
    assert f"{len(before) - 2} replay legs sent on celery" in replay_cli(stack, 100)
    with stack.client(ADMIN) as admin:

        def replayed() -> list[dict[str, Any]] | None:
            params = {"kind": "replay", "course_content_id": "cc-prefect"}
            found = admin.get("/api/comparisons", params=params)
            return found.json() if found.headers["X-Total-Count"] == str(len(before)) else None

        found = wait_until(replayed, "one replay comparison per job", 300)
        after = {r["id"]: r for r in admin.get("/api/results", params={"course_content_id": "cc-prefect"}).json()}
    assert sorted(c["result_id"] for c in found) == sorted(before)
    assert {c["shadow"]["engine"] for c in found} == {"celery"}
    assert {i: after[i] for i in before} == before
