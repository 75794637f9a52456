"""Mismatches re-judged and a busy runner told from a dead one, on the real engines (issue 27 §2 and §4).

- A flaky student (scripted: each run waits for the verdict the test gives it) differs between Celery and
  Prefect in shadow; the gateway runs the job again on both engines, Prefect disagrees with itself, and the
  comparison's current class becomes `noise`, the flake statistics learn the flip, and the gate and the scorecard
  count it as noise. The same student, wrong on Prefect both times, is re-judged a reproducible `mismatch`.
- A Prefect runner at its limit (1), held by a run that waits: the new engine's further legs are queued and
  `Late` while the runner still polls. The gate does not fail on `infra_error_rate` (the engine is alive, the
  legs are waited for), the legs run once the slot frees and are samples like any other; a leg that is still
  queued at its deadline ends `late`, neither an infra error nor a sample.

Each Prefect leg of these tests runs on a runner of its own (its own deployment name and `SANDBOX_ROOT`), so the
test knows which waiting run is which engine's: the Celery worker's runs are under the stack's sandbox root.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from legacy_stack import (
    ADMIN,
    DIRS,
    Stack,
    _repo,
    comparison_of,
    evaluate_gate,
    runner_env,
    running_stack,
    submit_job,
    wait_until,
)
from sqlalchemy import select

from gateway.store.db import make_sync_engine
from gateway.store.models import FlakeStat, Leg
from tests.conftest import PostgresDB, RedisDB
from tests.service.conftest import fresh_pg_database
from tests.support.celery_worker import settings_from_env
from tests.support.prefect_server import running_runner
from tests.support.scripted_student import SCRIPTED_CALC, Script
from tests.support.slow_student import sandbox_root

pytestmark = [pytest.mark.slow]
ADD = "test_calc.py::test_add"
# One sample is enough to be judged; run times are the scripted runs' waits for the test, not the engines' speed.
GATE = {"min_samples": 1, "max_p99_ratio": 1000.0}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_db: PostgresDB, redis_db: RedisDB) -> Iterator[Stack]:
    with (
        fresh_pg_database(postgres_db) as db,
        running_stack(tmp_path_factory.mktemp("rejudge"), db.env(), redis_db.env(), prefect=True) as found,
    ):
        yield found


@contextlib.contextmanager
def own_runner(stack: Stack, root: Path, name: str, limit: int) -> Iterator[Path]:
    """A Prefect runner serving `test-assignment/<name>` with `limit` slots; yields its sandbox root."""
    assert stack.prefect_api is not None
    with sandbox_root() as runs:
        env = runner_env(stack.prefect_api, root / name, stack.data, stack.server, str(runs))
        with running_runner(env, limit=limit, deployment_name=name, wait_for=[f"test-assignment/{name}"]):
            yield runs


@pytest.fixture(scope="module")
def scripted_runs(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with own_runner(stack, tmp_path_factory.mktemp("scripted-runner"), "scripted", 4) as runs:
        yield runs


def student_repo(root: Path, name: str) -> tuple[dict[str, str], str]:
    """A repository `<root>/<name>.git` of the scripted student (at every assignment directory): how to submit
    from it, and its commit (a note makes it this repository's own)."""
    files = {f"{d}/calc.py": SCRIPTED_CALC for d in DIRS.values()}
    _url, commit = _repo(root / f"{name}.git", {**files, "note.txt": name})
    return {"provider_url": root.as_uri(), "project": name}, commit


def change(client: httpx.Client, key: str, action: str, **body: Any) -> dict[str, Any]:
    answer = client.post(f"/api/admin/cutover/content/{key}/{action}", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def shadow_setting(client: httpx.Client, key: str, **values: Any) -> None:
    answer = client.put(f"/api/admin/shadow/contents/{key}", json=values)
    assert answer.status_code == 200, answer.text


def card_of(client: httpx.Client, key: str) -> dict[str, Any]:
    (card,) = [c for c in client.get("/api/cutover/scorecard").json() if c["scope_id"] == key]
    return card


def store_rows(stack: Stack, stmt: Any) -> list[Any]:
    """Rows of the gateway's store (what no API shows as such: a leg's native state, the flake statistics)."""
    engine = make_sync_engine(settings_from_env({**stack.env, "GATEWAY_DATA_DIR": str(stack.data)}))
    try:
        with engine.connect() as conn:
            return list(conn.execute(stmt).all())
    finally:
        engine.dispose()


def flake_stat(stack: Stack, content: str, test: str) -> tuple[int, int]:
    stmt = select(FlakeStat.runs, FlakeStat.flips).where(
        FlakeStat.course_content_id == content, FlakeStat.test_key == test
    )
    found = store_rows(stack, stmt)
    return (found[0][0], found[0][1]) if found else (0, 0)


# ------------------------------------------------------------------------------------------ §2: re-judgement
def rejudged(stack: Stack, scripted_runs: Path, key: str, member: str, prefect_verdicts: tuple[str, str]) -> Any:
    """Shadow Celery → Prefect (on the scripted runner); the scripted student's job: Celery right on both of its
    runs, Prefect `prefect_verdicts` on its first run and on its re-judgement's. Returns the comparison while
    its re-judgement ran, the card then, the comparison re-judged, and the card after."""
    with stack.client(ADMIN) as admin:
        provider, commit = student_repo(stack.log_dir, f"{key}-{member}")
        script = Script({stack.sandbox_root: ["none"], scripted_runs: [prefect_verdicts[0]]})
        run = submit_job(admin, key, member, commit, **provider)
        wait_until(script.answer, "the job's Celery and Prefect runs to wait for their verdicts", 240)

        def running() -> dict[str, Any] | None:
            found = comparison_of(admin, run)
            return found if found and (found.get("rejudge") or {}).get("state") == "running" else None

        first = wait_until(running, "the mismatch and its re-judgement under way", 240)
        # The re-runs wait for their verdicts: until then the comparison is the mismatch it was.
        before = card_of(admin, f"cc-{key}")
        script.add(stack.sandbox_root, ["none"])
        script.add(scripted_runs, [prefect_verdicts[1]])
        wait_until(script.answer, "the re-judgement's two re-runs to wait for their verdicts", 240)

        def done() -> dict[str, Any] | None:
            found = comparison_of(admin, run)
            return found if found and (found.get("rejudge") or {}).get("state") == "done" else None

        again = wait_until(done, "the re-judgement to end", 240)
        return first, before, again, card_of(admin, f"cc-{key}"), evaluate_gate(admin, f"cc-{key}")


def test_a_flaky_test_is_rejudged_as_noise_and_the_gate_counts_it_so(stack: Stack, scripted_runs: Path) -> None:
    with stack.client(ADMIN) as admin:
        shadow_setting(admin, "cc-celery", properties={"deployment": "test-assignment/scripted"})
        change(admin, "cc-celery", "set", new_engine="prefect", stage="shadow", shadow_fraction=1.0,
               thresholds=GATE, reason="re-judged: flaky")  # fmt: skip
    # Prefect gets `add` wrong on its first run and right on its re-run: it disagreed with itself.
    first, before, again, after, evaluation = rejudged(stack, scripted_runs, "celery", "m-alice", ("add", "none"))
    assert (first["outcome"], first["primary"]["engine"], first["shadow"]["engine"]) == (
        "mismatch",
        "celery",
        "prefect",
    ), first
    assert {d["test"] for d in first["differences"] if d.get("test")} == {ADD}, first["differences"]
    # While the re-judgement ran, the gate counted the mismatch it was.
    assert (before["mismatches"], before["noise_mismatches"]) == (1, 0), before
    rejudge = again["rejudge"]
    assert (again["outcome"], rejudge["verdict"], rejudge["original_outcome"]) == ("noise", "noise", "mismatch"), again
    assert rejudge["flipped"] == {"primary": [], "shadow": [ADD]}, rejudge
    # The flake statistics learned it: test_add flipped once in its re-judged pairs (one pair per engine).
    runs, flips = flake_stat(stack, "cc-celery", ADD)
    assert flips == 1 and runs >= 2, (runs, flips)
    # The gate and the scorecard count the current class: noise, not a mismatch held against Prefect.
    assert (after["mismatches"], after["noise_mismatches"], after["samples"]) == (1, 1, 1), after
    assert (after["mismatch"]["events"], after["mismatch"]["trials"]) == (0, 1), after["mismatch"]
    evidence = evaluation["evidence"]
    assert (evidence["mismatches"], evidence["noise_mismatches"], evidence["mismatch_rate"]) == (1, 1, 0.0)
    assert evaluation["verdict"] != "Failed", evaluation


def test_a_reproducible_difference_is_rejudged_as_a_mismatch(stack: Stack, scripted_runs: Path) -> None:
    with stack.client(ADMIN) as admin:
        shadow_setting(admin, "cc-rejudge", properties={"deployment": "test-assignment/scripted"})
        change(admin, "cc-rejudge", "set", new_engine="prefect", stage="shadow", shadow_fraction=1.0,
               thresholds=GATE, reason="re-judged: reproducible")  # fmt: skip
    # Prefect gets `add` wrong on both of its runs, Celery right on both: each engine agrees with itself.
    first, _before, again, after, evaluation = rejudged(stack, scripted_runs, "rejudge", "m-carol", ("add", "add"))
    assert (first["outcome"], first["primary"]["engine"], first["shadow"]["engine"]) == (
        "mismatch",
        "celery",
        "prefect",
    ), first
    rejudge = again["rejudge"]
    assert (again["outcome"], rejudge["verdict"]) == ("mismatch", "reproduced"), again
    assert rejudge["flipped"] == {"primary": [], "shadow": []}, rejudge
    assert flake_stat(stack, "cc-rejudge", ADD)[1] == 0
    assert (after["mismatches"], after["noise_mismatches"]) == (1, 0), after
    evidence = evaluation["evidence"]
    assert (evidence["mismatches"], evidence["noise_mismatches"], evidence["mismatch_rate"]) == (1, 0, 1.0)


# ------------------------------------------------------------------------------- §4: busy is not dead (Prefect)
def shadow_legs(stack: Stack, result_ids: list[str]) -> list[Any]:
    """The Prefect shadow legs of these jobs: (result id, finished, started_at, native state, outcome, last error)."""
    stmt = select(Leg.result_id, Leg.finished, Leg.started_at, Leg.native_state, Leg.outcome, Leg.last_error).where(
        Leg.result_id.in_(result_ids), Leg.engine == "prefect", Leg.role == "shadow"
    )
    return store_rows(stack, stmt)


def test_a_busy_prefect_runner_is_waited_for_and_a_late_leg_is_no_infra_error(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Shadow Celery → Prefect on a runner with one slot, held by a scripted run that waits for its verdict. The
    next jobs' Prefect legs are queued and go `Late` while the runner still polls: the gate sees them unstarted
    past the start timeout, asks Prefect, finds its runner alive and does not fail; a job whose shadow deadline
    passes while it is queued ends `late`, which the gate counts neither as an error nor as a sample. Once the
    slot frees, the queued legs run and are compared like any other."""
    root = tmp_path_factory.mktemp("busy-runner")
    with own_runner(stack, root, "busy", 1) as busy_runs, stack.client(ADMIN) as admin:
        shadow_setting(admin, "cc-busy", properties={"deployment": "test-assignment/busy"}, deadline_seconds=1800)
        change(admin, "cc-busy", "set", new_engine="prefect", stage="shadow", shadow_fraction=1.0,
               thresholds={**GATE, "start_timeout_seconds": 5}, reason="busy is not dead")  # fmt: skip
        provider, commit = student_repo(root, "busy-holder")
        script = Script({stack.sandbox_root: ["none"], busy_runs: []})
        holder = submit_job(admin, "busy", "m-alice", commit, **provider)
        # The holder's Celery run is answered; its Prefect run waits, holding the runner's only slot.
        wait_until(lambda: script.answer() and script.waiting() == 0, "the holder's Celery run to be answered", 240)
        wait_until(lambda: len(list(busy_runs.glob("*/space/work/waiting"))) == 1, "the holder's Prefect run", 240)
        queued = [submit_job(admin, "busy", m, stack.repos.commit(s)) for m, s in (("m-bob", "failing"),
                                                                             ("m-carol", "passing"))]  # fmt: skip
        # One more job whose shadow may wait only 60 s: it is still queued behind the holder when that passes.
        shadow_setting(admin, "cc-busy", deadline_seconds=60)
        provider, commit = student_repo(root, "busy-late")
        script.add(stack.sandbox_root, ["none"])
        late = submit_job(admin, "busy", "m-slow", commit, **provider)
        wait_until(script.answer, "the late job's Celery run to wait for its verdict", 240)

        def seen_late() -> dict[str, Any] | None:
            legs = shadow_legs(stack, queued)
            if len(legs) != 2 or any(leg.native_state != "Late" for leg in legs):
                return None
            evaluation = evaluate_gate(admin, "cc-busy")
            return evaluation if evaluation["evidence"]["new_unstarted"] >= 2 else None

        # Late, unstarted past the start timeout, the runner alive: waited for, not a dead engine.
        evaluation = wait_until(seen_late, "the queued Prefect legs to be Late and unstarted", 240)
        assert evaluation["evidence"]["new_alive"] is True, evaluation
        assert evaluation["verdict"] != "Failed" and "infra_error_rate" not in evaluation["failing"], evaluation
        assert all(leg.last_error is None and not leg.finished for leg in shadow_legs(stack, queued))

        found = wait_until(lambda: comparison_of(admin, late), "the late job's shadow to reach its deadline", 240)
        assert (found["outcome"], found["side"]) == ("late", "shadow"), found
        assert "queued behind a busy worker" in found["reason"], found
        after_late = evaluate_gate(admin, "cc-busy")
        # The holder is released: the queued legs run one by one and are samples like any other.
        script.add(busy_runs, ["none"])
        wait_until(script.answer, "the holder's Prefect run to be answered", 60)
        compared = [
            wait_until(lambda i=i: comparison_of(admin, i), f"the comparison of {i}", 300) for i in (holder, *queued)
        ]
        final = evaluate_gate(admin, "cc-busy")
    assert [c["outcome"] for c in compared] == ["match"] * 3, compared
    assert (after_late["evidence"]["new_infra_errors"], after_late["evidence"]["new_legs"]) == (0, 0), after_late
    evidence = final["evidence"]
    # The holder and the two queued jobs: three samples, no error; the late job is neither.
    assert (evidence["comparable"], evidence["new_legs"], evidence["new_infra_errors"]) == (3, 3, 0), final
    assert final["verdict"] != "Failed", final
