"""Gradual cutover on the real engines: the API on PostgreSQL, a Celery worker, a Prefect server and its runner.

- A rollback in one call while jobs are in flight on both engines: every job finishes on the engine it was
  admitted to (the slow student's solution holds each run until the test releases it, so they are certainly in
  flight when the stage changes), its routing decision stays as recorded, and every old id keeps resolving.
- Sticky buckets through the API, in the reverse direction (Celery → Prefect): the members a 25 % canary sent to
  the new engine are still there at 50 %; a dry run of the widening names exactly the members that move and
  changes nothing.

The same behaviour is tested table-driven on the in-memory engine in `tests/fast/test_cutover_routing.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from legacy_stack import ADMIN, DIRS, FINAL, SLOW_CALC, Stack, _git, _repo, flow_runs_by_leg, wait_until

from backends.examples import DATA as EXAMPLE_DATA
from gateway.cutover.buckets import bucket, in_canary
from tests.support.celery_worker import stop_worker
from tests.support.slow_student import waiting_markers

pytestmark = [pytest.mark.slow]
COMPLETED = 0
MEMBERS = ("m-alice", "m-bob", "m-carol", "m-slow")


def change(client: httpx.Client, scope: str, key: str, action: str, **body: Any) -> dict[str, Any]:
    answer = client.post(f"/api/admin/cutover/{scope}/{key}/{action}", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def submit(client: httpx.Client, key: str, member: str, commit: str, **extra: Any) -> dict[str, Any]:
    body = {"directory": DIRS[key], "course_member_id": member, "version_identifier": commit, **extra}
    answer = client.post("/api/tests", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def primary_leg(client: httpx.Client, result_id: str) -> dict[str, Any]:
    answer = client.get(f"/api/admin/results/{result_id}/routing")
    assert answer.status_code == 200, answer.text
    (leg,) = [leg for leg in answer.json()["legs"] if leg["role"] == "primary"]
    return leg


def pinned(leg: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """What must not change once a job is admitted: its leg, the engine and the routing decision."""
    return leg["id"], leg["engine"], leg["routing"]


def repo_with_commits(root: Path, name: str, calc: str, count: int) -> list[str]:
    """`<root>/<name>.git` with the given solution at every content's directory, `count` distinct commits."""
    path = root / f"{name}.git"
    _url, first = _repo(path, {f"{d}/calc.py": calc for d in DIRS.values()})
    commits = [first]
    for i in range(count - 1):
        (path / "note.txt").write_text(str(i))
        _git(["add", "-A"], path)
        _git(["commit", "-q", "--no-gpg-sign", "-m", f"again {i}"], path)
        commits.append(_git(["rev-parse", "HEAD"], path))
    return commits


def waiting_runs(stack: Stack) -> int:
    """Slow runs blocked now (a `waiting` marker without its `release`)."""
    return sum(not (m.parent / "release").exists() for m in waiting_markers(stack.sandbox_root))


def all_final(client: httpx.Client, stack: Stack, ids: list[str]) -> bool:
    """Whether every job is final; releases any slow run that started since the last look (queued ones start late)."""
    stack.release_slow_runs()
    return all(client.get(f"/api/results/{i}/status").json() in FINAL for i in ids)


# ------------------------------------------------------------------------------------- rollback in flight
def test_a_rollback_with_jobs_in_flight_on_both_engines_strands_nothing(both_engines: Stack, tmp_path: Path) -> None:
    stack = both_engines
    slow = repo_with_commits(tmp_path, "slow", SLOW_CALC, 1)[0]
    via_slow_repo = {"provider_url": tmp_path.as_uri(), "project": "slow"}
    with stack.client(ADMIN) as admin:
        # The backend's migration, Prefect → Celery, first at old_only to learn its salt; then a canary that
        # splits the four members two and two (the old engine does not shadow, so each job has one leg).
        created = change(admin, "backend", "prefect-main", "set", new_engine="celery", stage="old_only",
                         shadow_fraction=0.0, reason="conformance: rollback in flight")  # fmt: skip
        salt = created["after"]["salt"]
        buckets = {m: bucket(salt, "cc-prefect", m) for m in MEMBERS}
        ordered = sorted(buckets.values())
        assert ordered[1] < ordered[2], buckets
        percentage = (ordered[1] + 1) / 100  # the two lowest buckets are in
        canary = change(admin, "backend", "prefect-main", "set", stage="canary", percentage=percentage,
                        reason="canary for two of four")  # fmt: skip
        version = canary["after"]["version"]
        runs = {m: submit(admin, "prefect", m, slow, **via_slow_repo) for m in MEMBERS}
        admitted = {m: primary_leg(admin, run["id"]) for m, run in runs.items()}
        assert {leg["engine"] for leg in admitted.values()} == {"celery", "prefect"}, admitted
        for member, leg in admitted.items():
            expected = "celery" if in_canary(buckets[member], percentage) else "prefect"
            assert leg["engine"] == expected
            assert {k: leg["routing"][k] for k in ("stage", "percentage", "bucket", "config_version", "config_scope")} \
                == {"stage": "canary", "percentage": percentage, "bucket": buckets[member],
                    "config_version": version, "config_scope": "backend"}  # fmt: skip
        # Every run is executing (blocked in the student's code) before the stage changes.
        wait_until(lambda: waiting_runs(stack) >= len(runs), "every slow run to be executing", 180)
        assert {admin.get(f"/api/results/{r['id']}/status").json() for r in runs.values()}.isdisjoint(FINAL)

        rolled = change(admin, "backend", "prefect-main", "rollback", reason="students report timeouts")
        assert rolled["applied"] and rolled["after"]["stage"] == "old_only", rolled
        # A job admitted after the rollback goes to the old engine; those in flight are not re-routed.
        late = submit(admin, "prefect", "m-alice", stack.repos.commit("passing"))
        late_leg = primary_leg(admin, late["id"])
        assert (late_leg["engine"], late_leg["routing"]["rule"]) == ("prefect", "stage:old_only")
        assert late_leg["routing"]["config_version"] == rolled["after"]["version"]
        assert {m: pinned(primary_leg(admin, r["id"])) for m, r in runs.items()} == {
            m: pinned(leg) for m, leg in admitted.items()
        }

        ids = [r["id"] for r in runs.values()] + [late["id"]]
        wait_until(lambda: all_final(admin, stack, ids), "every job to finish after its release", 240)
        for member, run in runs.items():
            row = admin.get(f"/api/results/{run['id']}").json()
            assert (row["status"], row["result"]) == (COMPLETED, 1.0), row
            assert admin.get(f"/api/results/{run['id']}/status").json() == COMPLETED
            system = admin.get(f"/api/system/status/{run['test_system_id']}")
            assert system.json() == {"status": "COMPLETED"}, system.text
            assert pinned(primary_leg(admin, run["id"])) == pinned(admitted[member])
        history = admin.get("/api/admin/cutover/backend/prefect-main/history").json()
        assert [e["to_stage"] for e in history[:2]] == ["old_only", "canary"], history
    # Each engine really ran the jobs admitted to it, and only those: Prefect knows a flow run per Prefect leg.
    assert stack.prefect_api is not None
    legs = {leg["id"]: leg["engine"] for leg in admitted.values()}
    api = stack.prefect_api

    def prefect_done() -> dict[str, list[dict[str, Any]]] | None:
        found = flow_runs_by_leg(api, list(legs))
        done = all(
            r["state_type"] == "COMPLETED" for leg_id, e in legs.items() if e == "prefect" for r in found[leg_id]
        )
        return found if done else None

    flow_runs = wait_until(prefect_done, "the Prefect flow runs to complete", 60)
    for leg_id, engine in legs.items():
        assert len(flow_runs[leg_id]) == (1 if engine == "prefect" else 0), (engine, flow_runs[leg_id])


# ------------------------------------------------------------------------------------------ sticky buckets
def split_salt(members: tuple[str, ...], content: str) -> str:
    """A salt that puts one member in at 25 %, another in only from 50 % and one out at 50 % (non-vacuous)."""
    for i in range(10_000):
        salt = f"sticky-{i}"
        sides = [(in_canary(b, 25), in_canary(b, 50)) for b in (bucket(salt, content, m) for m in members)]
        if {(True, True), (False, True), (False, False)} <= set(sides):
            return salt
    raise AssertionError("no salt splits the members")


def test_widening_a_canary_only_adds_members(both_engines: Stack, tmp_path: Path) -> None:
    """Celery → Prefect for one content: 25 % then 50 %; a member once on Prefect stays there."""
    stack = both_engines
    members = ("m-alice", "m-bob", "m-carol")
    passing = (EXAMPLE_DATA / "passing" / "week1" / "ex1" / "calc.py").read_text()
    commits = repo_with_commits(tmp_path, "two", passing, 2)
    via_repo = {"provider_url": tmp_path.as_uri(), "project": "two"}
    salt = split_salt(members, "cc-celery")
    with stack.client(ADMIN) as admin:
        change(admin, "content", "cc-celery", "set", new_engine="prefect", stage="shadow", salt=salt,
               shadow_fraction=0.0, canary_steps=[5, 25, 50, 100], reason="conformance: sticky")  # fmt: skip
        change(admin, "content", "cc-celery", "set", stage="canary", percentage=25)
        first = {m: submit(admin, "celery", m, commits[0], **via_repo) for m in members}
        at_25 = {m: primary_leg(admin, r["id"]) for m, r in first.items()}

        before = admin.get("/api/admin/cutover/content/cc-celery").json()
        dry = change(admin, "content", "cc-celery", "promote", dry_run=True, members=list(members))
        assert (dry["applied"], dry["after"]["percentage"]) == (False, 50.0), dry
        assert admin.get("/api/admin/cutover/content/cc-celery").json() == before  # a dry run saves nothing
        moving = {p["course_member_id"] for p in dry["preview"] if p["moves"]}
        widened = change(admin, "content", "cc-celery", "promote", reason="widen")
        assert (widened["after"]["stage"], widened["after"]["percentage"]) == ("canary", 50.0)
        second = {m: submit(admin, "celery", m, commits[1], **via_repo) for m in members}
        at_50 = {m: primary_leg(admin, r["id"]) for m, r in second.items()}

        for member in members:
            b = bucket(salt, "cc-celery", member)
            assert at_25[member]["routing"]["bucket"] == at_50[member]["routing"]["bucket"] == b  # sticky
            assert at_25[member]["engine"] == ("prefect" if in_canary(b, 25) else "celery")
            assert at_50[member]["engine"] == ("prefect" if in_canary(b, 50) else "celery")
            assert (at_25[member]["routing"]["percentage"], at_50[member]["routing"]["percentage"]) == (25.0, 50.0)
        on_new_25 = {m for m, leg in at_25.items() if leg["engine"] == "prefect"}
        on_new_50 = {m for m, leg in at_50.items() if leg["engine"] == "prefect"}
        assert on_new_25 and on_new_25 < on_new_50 < set(members), (on_new_25, on_new_50)
        assert moving == on_new_50 - on_new_25  # the preview named exactly the members that moved

        ids = [r["id"] for r in [*first.values(), *second.values()]]
        wait_until(lambda: all_final(admin, stack, ids), "every job of the canary to finish", 240)
        rows = [admin.get(f"/api/results/{i}").json() for i in ids]
        assert {(row["status"], row["result"]) for row in rows} == {(COMPLETED, 1.0)}, rows


# ----------------------------------------------------------------------------------------------- demotion
def test_a_real_mismatch_in_new_primary_demotes_on_evidence(both_engines: Stack) -> None:
    """Prefect → Celery for the content whose Prefect flow always writes back 0.5: Celery answers 1.0 for a
    passing solution, Prefect (shadowing) says 0.5, a real mismatch; the gate fails on it and demotes."""
    stack = both_engines
    with stack.client(ADMIN) as admin:
        change(admin, "content", "cc-writeback", "set", new_engine="celery", stage="new_primary", shadow_fraction=1.0,
               thresholds={"min_samples": 1, "max_mismatch_rate": 0.5, "confidence": 0.5},
               reason="conformance: demotion")  # fmt: skip
        run = submit(admin, "writeback", "m-carol", stack.repos.commit("passing"))
        assert primary_leg(admin, run["id"])["engine"] == "celery"

        def compared() -> dict[str, Any] | None:
            found = admin.get(f"/api/results/{run['id']}/comparison")
            return found.json() if found.status_code == 200 else None

        comparison = wait_until(compared, "the shadow comparison", 240)
        assert comparison["outcome"] == "mismatch", comparison

        def demoted() -> dict[str, Any] | None:
            admin.post("/api/admin/cutover/content/cc-writeback/evaluate")  # or the reconciler's periodic step
            migration = admin.get("/api/admin/cutover/content/cc-writeback").json()
            return migration if migration["stage"] == "canary" else None

        wait_until(demoted, "the gate to demote the migration", 60)
        (event, *_rest) = admin.get("/api/admin/cutover/content/cc-writeback/history").json()
    assert (event["actor"], event["from_stage"], event["to_stage"]) == ("gate", "new_primary", "canary"), event
    assert (event["evaluation"]["verdict"], event["evaluation"]["decided_by"]) == ("Failed", "mismatch_rate"), event


# ------------------------------------------------------------------------------------ the gate, on evidence
PASSING = (EXAMPLE_DATA / "passing" / "week1" / "ex1" / "calc.py").read_text()
# Fast thresholds for a handful of jobs. The p99 ratio is wide: Prefect's and Celery's run times differ by
# their overheads, not by the student; the test is about the gate walking on evidence, not about speed. A 50 %
# confidence level lets two clean comparisons decide (the interval of 0 in 2 is 0-18.5 %).
FAST_GATE = {
    "min_samples": 2,
    "max_mismatch_rate": 0.25,
    "max_infra_error_rate": 0.25,
    "max_p99_ratio": 100.0,
    "confidence": 0.5,
}


def salt_where(content: str, wanted: dict[str, bool], percentage: float) -> str:
    """A salt that puts each member in (True) or out of (False) a `percentage` canary, as wanted."""
    for i in range(10_000):
        salt = f"gate-{i}"
        if all(in_canary(bucket(salt, content, m), percentage) == inside for m, inside in wanted.items()):
            return salt
    raise AssertionError(f"no salt places the members as wanted: {wanted}")


def legs_of(client: httpx.Client, result_id: str) -> dict[str, str]:
    """role → engine of a job's legs (one shadow at most here: the stacks run no A/A)."""
    answer = client.get(f"/api/admin/results/{result_id}/routing")
    assert answer.status_code == 200, answer.text
    return {leg["role"]: leg["engine"] for leg in answer.json()["legs"]}


def comparison(client: httpx.Client, result_id: str, timeout: float = 240) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        answer = client.get(f"/api/results/{result_id}/comparison")
        return answer.json() if answer.status_code == 200 else None

    return wait_until(found, f"the comparison of {result_id}", timeout)


def evaluated(client: httpx.Client, content: str) -> dict[str, Any]:
    """Evaluate on demand (the reconciler's periodic step may also have run: either way it is the gate's step)."""
    answer = client.post(f"/api/admin/cutover/content/{content}/evaluate")
    assert answer.status_code == 200, answer.text
    migration = client.get(f"/api/admin/cutover/content/{content}")
    assert migration.status_code == 200, migration.text
    return migration.json()


def test_the_auto_policy_walks_a_course_from_old_only_to_new_only_on_evidence(
    both_engines: Stack, tmp_path: Path
) -> None:
    """Prefect → Celery for one content under `auto`: each stage gets two jobs whose reports match, and an
    evaluation on demand promotes it one step; in canary at 50 % one member is answered by Celery, the other by
    Prefect; in new_only Celery answers alone."""
    stack = both_engines
    members = ("m-alice", "m-carol")
    salt = salt_where("cc-walk", {"m-alice": True, "m-carol": False}, 50)
    commits = iter(repo_with_commits(tmp_path, "walk", PASSING, 9))
    via_repo = {"provider_url": tmp_path.as_uri(), "project": "walk"}
    # Who answers (primary) and who shadows, per stage and member.
    expected = {
        ("shadow", 0.0): {m: {"primary": "prefect", "shadow": "celery"} for m in members},
        ("canary", 50.0): {"m-alice": {"primary": "celery", "shadow": "prefect"},
                           "m-carol": {"primary": "prefect", "shadow": "celery"}},
        ("canary", 100.0): {m: {"primary": "celery", "shadow": "prefect"} for m in members},
        ("new_primary", 100.0): {m: {"primary": "celery", "shadow": "prefect"} for m in members},
    }  # fmt: skip
    with stack.client(ADMIN) as admin:
        # (The reconciler's periodic evaluation may take the first step at any moment: start from the answer.)
        migration = change(admin, "content", "cc-walk", "set", new_engine="celery", stage="old_only",
                           policy="auto", min_stage_seconds=0, canary_steps=[50, 100], shadow_fraction=1.0, salt=salt,
                           thresholds=FAST_GATE, reason="conformance: the walk")["after"]  # fmt: skip
        walked = [(migration["stage"], migration["percentage"])]
        ids = []
        for _step in range(6):
            if migration["stage"] == "new_only":
                break
            where = (migration["stage"], migration["percentage"])
            if where in expected:
                runs = {m: submit(admin, "walk", m, next(commits), **via_repo)["id"] for m in members}
                assert {m: legs_of(admin, i) for m, i in runs.items()} == expected[where], where
                outcomes = {m: comparison(admin, i)["outcome"] for m, i in runs.items()}
                assert outcomes == {m: "match" for m in members}, (where, outcomes)
                ids += runs.values()
            migration = evaluated(admin, "cc-walk")
            walked.append((migration["stage"], migration["percentage"]))
        assert walked == [("old_only", 0.0), ("shadow", 0.0), ("canary", 50.0), ("canary", 100.0),
                          ("new_primary", 100.0), ("new_only", 100.0)]  # fmt: skip

        last = submit(admin, "walk", "m-alice", next(commits), **via_repo)["id"]
        assert legs_of(admin, last) == {"primary": "celery"}  # new_only: nothing shadows
        ids.append(last)
        wait_until(lambda: all_final(admin, stack, ids), "every job of the walk to finish", 240)
        rows = [admin.get(f"/api/results/{i}").json() for i in ids]
        assert {(row["status"], row["result"]) for row in rows} == {(COMPLETED, 1.0)}, rows
        history = admin.get("/api/admin/cutover/content/cc-walk/history").json()
    steps = [(e["actor"], e["action"], e["from_stage"], e["to_stage"]) for e in reversed(history[:5])]
    assert steps == [("gate", "promote", "old_only", "shadow"), ("gate", "promote", "shadow", "canary"),
                     ("gate", "promote", "canary", "canary"), ("gate", "promote", "canary", "new_primary"),
                     ("gate", "promote", "new_primary", "new_only")]  # fmt: skip
    # Every promotion out of a stage with evidence carries the Successful evaluation that allowed it.
    for event in history[:4]:
        assert (event["evaluation"]["verdict"], event["evaluation"]["evidence"]["comparable"]) == ("Successful", 2)


def test_a_stopped_new_engine_in_canary_fails_the_gate_on_infra_errors_and_demotes(
    both_engines: Stack, tmp_path: Path
) -> None:
    """Prefect → Celery in canary; both members are outside the canary, so Prefect answers them and Celery
    shadows. With Celery's worker stopped (by pid) its shadow legs end at their 15 s deadline as shadow
    timeouts: the next evaluation is Failed on the new engine's infra-error rate and demotes to shadow."""
    stack = both_engines
    members = ("m-alice", "m-carol")
    salt = salt_where("cc-demote", {m: False for m in members}, 5)
    commits = iter(repo_with_commits(tmp_path, "demote", PASSING, 3))
    via_repo = {"provider_url": tmp_path.as_uri(), "project": "demote"}
    with stack.client(ADMIN) as admin:
        # The stage decides the shadow engine and fraction; the content's shadow setting gives the deadline.
        answer = admin.put("/api/admin/shadow/contents/cc-demote", json={"deadline_seconds": 15})
        assert answer.status_code == 200, answer.text
        change(admin, "content", "cc-demote", "set", new_engine="celery", stage="shadow", salt=salt,
               shadow_fraction=1.0, thresholds=FAST_GATE, reason="conformance: a stopped engine")  # fmt: skip
        change(admin, "content", "cc-demote", "set", stage="canary", percentage=5, reason="a small canary")
        healthy = submit(admin, "demote", "m-alice", next(commits), **via_repo)["id"]
        assert legs_of(admin, healthy) == {"primary": "prefect", "shadow": "celery"}
        assert comparison(admin, healthy)["outcome"] == "match"
        waiting = evaluated(admin, "cc-demote")
        assert waiting["stage"] == "canary", waiting  # healthy so far: one sample, not enough to judge
        assert waiting["last_evaluation"]["verdict"] == "Inconclusive", waiting

        stop_worker(stack.worker)
        try:
            runs = [submit(admin, "demote", m, next(commits), **via_repo)["id"] for m in members]
            found = [comparison(admin, i, timeout=120) for i in runs]
            assert [c["outcome"] for c in found] == ["shadow_timeout"] * 2, found
            demoted = evaluated(admin, "cc-demote")
        finally:
            stack.start_worker()
        assert (demoted["stage"], demoted["percentage"]) == ("shadow", 0.0), demoted
        # The students were answered by Prefect all along.
        wait_until(lambda: all_final(admin, stack, runs), "the Prefect answers", 120)
        rows = [admin.get(f"/api/results/{i}").json() for i in runs]
        assert {(row["status"], row["result"]) for row in rows} == {(COMPLETED, 1.0)}, rows
        (event, *_rest) = admin.get("/api/admin/cutover/content/cc-demote/history").json()
    step = (event["actor"], event["action"], event["from_stage"], event["to_stage"])
    assert step == ("gate", "demote", "canary", "shadow"), event
    evaluation = event["evaluation"]
    assert (evaluation["verdict"], evaluation["decided_by"]) == ("Failed", "infra_error_rate"), evaluation
    assert (evaluation["evidence"]["new_legs"], evaluation["evidence"]["new_infra_errors"]) == (3, 2), evaluation
    assert "new engine infra error 66.7 % (50 %: 47.2–81.7 %) above 25 %" in event["reason"], event
