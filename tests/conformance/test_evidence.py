"""Evidence a gate can trust, on the real engines (issue 27): engines configured differently are named on the
first comparison, and the gate fails on it before any grade decides; a `verified` canary gives a student the old
engine's grade where the new engine's lower limit would have cut it; its mismatch, re-run on both engines,
is re-judged a reproducible mismatch; a killed new-engine worker fails the gate within a minute, whatever the
shadow deadline.

One stack for the module: the Celery worker's sandbox time limit is 4 s, Prefect's the default (60 s); the
content `untimed-prefect` sets no limit of its own, so each engine's default applies.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from legacy_stack import ADMIN, DIRS, Stack, running_stack, wait_until
from sqlalchemy import select

from gateway.store.db import make_sync_engine
from gateway.store.models import Leg
from tests.conftest import PostgresDB, RedisDB
from tests.service.conftest import fresh_pg_database
from tests.support.celery_worker import settings_from_env, stop_worker

pytestmark = [pytest.mark.slow]
CELERY_LIMIT = {"SANDBOX_TIMEOUT_SECONDS": "4"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_db: PostgresDB, redis_db: RedisDB) -> Iterator[Stack]:
    with (
        fresh_pg_database(postgres_db) as db,
        running_stack(
            tmp_path_factory.mktemp("evidence"), db.env(), redis_db.env(), prefect=True, worker_extra=CELERY_LIMIT
        ) as found,
    ):
        yield found


def change(client: httpx.Client, key: str, action: str, **body: Any) -> dict[str, Any]:
    answer = client.post(f"/api/admin/cutover/content/{key}/{action}", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def comparison_of(client: httpx.Client, result_id: str, timeout: float = 240) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        answer = client.get(f"/api/results/{result_id}/comparison")
        return answer.json() if answer.status_code == 200 else None

    return wait_until(found, f"the comparison of {result_id}", timeout)


def test_a_lower_time_limit_is_named_on_the_first_comparison_and_fails_the_gate(stack: Stack) -> None:
    with stack.client(ADMIN) as admin:
        change(admin, "cc-untimed-prefect", "set", new_engine="celery", stage="shadow", shadow_fraction=1.0,
               reason="evidence: parity")  # fmt: skip
        body = {"directory": DIRS["untimed-prefect"], "course_member_id": "m-alice",
                "version_identifier": stack.repos.commit("passing")}  # fmt: skip
        answer = admin.post("/api/tests", json=body)
        assert answer.status_code == 200, answer.text
        found = comparison_of(admin, answer.json()["id"])
        # The grades agree (the passing solution is fast): only the environments tell the engines apart.
        assert found["outcome"] == "match", found
        environment = found["environment"]
        # The time limit is named (with the limits derived from it: CPU time, the wall clock).
        assert "prefect: time limit 60 s, celery: 4 s" in environment["text"].split("; "), environment
        assert "prefect: wall-clock limit 180 s, celery: 12 s" in environment["text"].split("; "), environment
        assert environment["shadow"]["pytest"] == environment["primary"]["pytest"]
        run = admin.post("/api/admin/cutover/content/cc-untimed-prefect/evaluate").json()
        evaluation = run["evaluation"]
        assert (evaluation["verdict"], evaluation["decided_by"]) == ("Failed", "environment_parity"), evaluation
        assert evaluation["evidence"]["parity_breaks"] == 1
        assert "prefect: time limit 60 s, celery: 4 s" in evaluation["needs"][0]
        (card,) = [c for c in admin.get("/api/cutover/scorecard").json() if c["scope_id"] == "cc-untimed-prefect"]
        assert "prefect: time limit 60 s, celery: 4 s" in card["environment"]["text"].split("; ")


def leg_finished(stack: Stack, result_id: str, engine: str) -> bool:
    """Whether the job's first leg on `engine` (primary or shadow; not a re-judgement's re-run) is final."""
    store = make_sync_engine(settings_from_env({**stack.env, "GATEWAY_DATA_DIR": str(stack.data)}))
    try:
        with store.connect() as conn:
            stmt = select(Leg.finished).where(Leg.result_id == result_id, Leg.engine == engine,
                                              Leg.role.in_(("primary", "shadow")))  # fmt: skip
            return bool(conn.execute(stmt.order_by(Leg.created_at).limit(1)).scalar())
    finally:
        store.dispose()


def rerun_finished(stack: Stack, result_id: str, engine: str) -> bool:
    """Whether the job's re-judgement re-run on `engine` has ended."""
    store = make_sync_engine(settings_from_env({**stack.env, "GATEWAY_DATA_DIR": str(stack.data)}))
    try:
        with store.connect() as conn:
            stmt = select(Leg.finished, Leg.routing).where(Leg.result_id == result_id, Leg.engine == engine)
            return any(done and (routing or {}).get("experiment") == "rejudge" for done, routing in conn.execute(stmt))
    finally:
        store.dispose()


def test_a_verified_canary_gives_the_old_engines_grade_where_the_new_engines_limit_cuts(stack: Stack) -> None:
    """Canary 100 % to Celery (limit 4 s) under `verified`: the slow student's Celery run times out (a grade below
    1), the Prefect shadow (60 s) is released after that and passes: the row gets Prefect's 1.0, the mismatch is
    a comparison, and the primary leg records which engine's answer was written."""
    with stack.client(ADMIN) as admin:
        change(admin, "cc-untimed-prefect", "set", new_engine="celery", stage="canary", percentage=100,
               shadow_fraction=1.0, answer_policy="verified", thresholds={"parity": []},
               reason="evidence: verified canary")  # fmt: skip
        body = {"directory": DIRS["untimed-prefect"], "course_member_id": "m-slow",
                "version_identifier": stack.repos.commit("slow")}  # fmt: skip
        answer = admin.post("/api/tests", json=body)
        assert answer.status_code == 200, answer.text
        run = answer.json()
        try:

            def released() -> bool:  # Celery's run timed out first; then Prefect's is let go
                if not leg_finished(stack, run["id"], "celery"):
                    return False
                stack.release_slow_runs()
                return leg_finished(stack, run["id"], "prefect")

            wait_until(released, "the Celery run to time out and the Prefect run to be released and end", 180)
            found = comparison_of(admin, run["id"])

            def final() -> dict[str, Any] | None:
                row = admin.get(f"/api/results/{run['id']}").json()
                return row if row["status"] in (0, 1) else None

            row = wait_until(final, "the verified row", 120)
            routing = admin.get(f"/api/admin/results/{run['id']}/routing").json()

            def rejudged() -> dict[str, Any] | None:
                # As the first time: Celery's re-run times out on its own, then Prefect's re-run is let go.
                if rerun_finished(stack, run["id"], "celery"):
                    stack.release_slow_runs()
                got = admin.get(f"/api/results/{run['id']}/comparison").json()
                return got if (got.get("rejudge") or {}).get("state") == "done" else None

            again = wait_until(rejudged, "the mismatch's re-judgement", 240)
        finally:
            stack.release_slow_runs()  # the re-judgement's Prefect re-run waits too
    assert found["outcome"] == "mismatch", found
    assert (found["primary"]["engine"], found["shadow"]["engine"]) == ("celery", "prefect")
    assert found["primary"]["score"] < 1.0 and found["shadow"]["score"] == 1.0, found
    assert row["result"] == 1.0, row  # the old engine's grade, not the new engine's cut one
    (primary,) = [leg for leg in routing["legs"] if leg["role"] == "primary"]
    assert primary["routing"]["answered"]["written_from"] == "shadow", primary["routing"]
    # Re-run on both engines, each agrees with itself: a reproducible mismatch, not noise.
    rejudge = again["rejudge"]
    assert (rejudge["verdict"], again["outcome"]) == ("reproduced", "mismatch"), (rejudge["reason"], rejudge["flipped"])


def test_a_killed_worker_fails_the_gate_within_a_minute(stack: Stack) -> None:
    """Canary 100 % to Celery (its time limit equals Prefect's here: the content sets 10 s), then its worker is
    killed: the jobs wait in the broker, no leg ends, and the shadow deadline (30 min) is far. The gate sees the
    new engine's legs not started within 20 s and no live worker, is Failed on infra_error_rate and demotes."""
    with stack.client(ADMIN) as admin:
        change(admin, "cc-demote", "set", new_engine="celery", stage="canary", percentage=100, shadow_fraction=1.0,
               reason="evidence: dead engine")  # fmt: skip
        stop_worker(stack.worker, graceful=False)
        killed = time.monotonic()
        try:
            for member in ("m-alice", "m-bob"):
                body = {"directory": DIRS["demote"], "course_member_id": member,
                        "version_identifier": stack.repos.commit("passing")}  # fmt: skip
                assert admin.post("/api/tests", json=body).status_code == 200

            def failed() -> dict[str, Any] | None:
                run = admin.post("/api/admin/cutover/content/cc-demote/evaluate").json()
                return run if run["evaluation"]["verdict"] == "Failed" else None

            run = wait_until(failed, "the gate to fail on the dead engine", 90)
            seconds = time.monotonic() - killed
        finally:
            stack.start_worker(CELERY_LIMIT)
    evaluation = run["evaluation"]
    assert evaluation["decided_by"] == "infra_error_rate", evaluation
    # One or both of the two jobs, whichever has waited 20 s when the gate looks.
    assert re.fullmatch(r"new engine dead: [12] legs? not started within 20 s and no live worker",
                        evaluation["needs"][0]), evaluation  # fmt: skip
    assert run["applied"] and run["after"]["stage"] == "shadow", run
    assert seconds < 60, seconds
